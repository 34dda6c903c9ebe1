-- cluster: sharded by cityHash64(product_id)
-- Co-view pairs in two tiers, so that the refresh every minute no longer regroups 90 days
-- of sessions (about 5 CPU-seconds a minute at 10 million events, and growing with the
-- data). Sessions that ended before a boundary (settled) are paired once a day; the
-- minute's refresh pairs only the sessions seen since that boundary and adds the settled
-- pairs to them, so coview_pairs keeps its rows and meaning for every reader.
--
-- A session counts on one side only: settled takes the sessions whose last view is before
-- its boundary (an hour before the daily refresh, so they had ended: a session ends after
-- 30 minutes without a hit), the minute's refresh those at or after the boundary it reads
-- from the settled table itself. Until the first daily refresh has written its boundary,
-- settled is empty and the minute's refresh pairs every session, as before. A late hit of
-- a session that had already settled (a spool replay a day later) joins its pairs at the
-- next daily refresh.
CREATE TABLE IF NOT EXISTS tagwerk.coview_pairs_settled
(
    site_id LowCardinality(String),
    product_id String,
    other_id String,
    sessions UInt64,
    last_ts DateTime64(3, 'UTC'),
    boundary DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, product_id, other_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.coview_pairs_settled_mv
REFRESH EVERY 1 DAY OFFSET 1 HOUR TO tagwerk.coview_pairs_settled AS
SELECT site_id, a AS product_id, b AS other_id, count() AS sessions, max(last) AS last_ts,
    any(cut) AS boundary
FROM
(
    SELECT site_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last,
        toDateTime64(now() - toIntervalHour(1), 3, 'UTC') AS cut
    FROM tagwerk.session_items
    GROUP BY site_id, session_id
    HAVING last >= now() - toIntervalDay(90) AND last < cut
        AND length(viewed) BETWEEN 2 AND 50
)
ARRAY JOIN viewed AS a
ARRAY JOIN viewed AS b
WHERE a != b
GROUP BY site_id, a, b;

-- The recent sessions are found by their rows' last view (a scan of one small column), then
-- read whole by their id: a session's older rows may not be merged into its newest yet.
DROP VIEW IF EXISTS tagwerk.coview_pairs_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.coview_pairs_mv
REFRESH EVERY 1 MINUTE TO tagwerk.coview_pairs AS
SELECT site_id, product_id, other_id, sessions, last_ts FROM tagwerk.coview_pairs_settled
UNION ALL
WITH (SELECT max(boundary) FROM tagwerk.coview_pairs_settled) AS settled_until
SELECT site_id, a AS product_id, b AS other_id, count() AS sessions, max(last) AS last_ts
FROM
(
    SELECT site_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last
    FROM tagwerk.session_items
    WHERE session_id IN (SELECT session_id FROM tagwerk.session_items
                         WHERE last_ts >= settled_until)
    GROUP BY site_id, session_id
    HAVING last >= greatest(settled_until, now() - toIntervalDay(90))
        AND length(viewed) BETWEEN 2 AND 50
)
ARRAY JOIN viewed AS a
ARRAY JOIN viewed AS b
WHERE a != b
GROUP BY site_id, a, b;
