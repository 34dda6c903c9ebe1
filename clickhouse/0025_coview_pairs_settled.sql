-- cluster: sharded by cityHash64(product_id)
-- Co-view pairs in two tiers, so that the refresh every minute no longer regroups 90 days
-- of sessions (about 5 CPU-seconds a minute at 10 million events, and growing with the
-- data). Sessions that ended before a boundary (settled) are paired once a day; the
-- minute's refresh pairs only the sessions seen since that boundary and adds the settled
-- pairs to them, so coview_pairs keeps its rows and meaning for every reader.
--
-- A session counts on one side only. The daily refresh takes the sessions whose last view is
-- before its boundary (an hour before it runs) and lists each of them in its table (a row
-- with product_id '' and the session id as other_id); the minute's refresh takes the
-- sessions with a view at or after that boundary that the list does not name. So a session
-- that goes on after it settled (a container's session timeout may be up to a day; a batch
-- may carry old times) is not counted twice: what it adds joins at the next daily refresh,
-- which pairs it whole again. Until the daily refresh has written a boundary, the minute's
-- refresh pairs every session, as before. A session stored whole after its day was settled
-- (a spool replayed days later) is paired at the next daily refresh too.
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
WITH settled AS (
    SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last,
        toDateTime64(now() - toIntervalHour(1), 3, 'UTC') AS cut
    FROM tagwerk.session_items
    GROUP BY site_id, session_id
    HAVING last >= now() - toIntervalDay(90) AND last < cut
        AND length(viewed) BETWEEN 2 AND 50
)
SELECT site_id, a AS product_id, b AS other_id, count() AS sessions, max(last) AS last_ts,
    any(cut) AS boundary
FROM settled
ARRAY JOIN viewed AS a
ARRAY JOIN viewed AS b
WHERE a != b
GROUP BY site_id, a, b
UNION ALL
SELECT site_id, '' AS product_id, session_id AS other_id, 0 AS sessions, last AS last_ts,
    cut AS boundary
FROM settled;

-- The recent sessions are found by their rows' last view (a scan of one small column), then
-- read whole by their id: a session's older rows may not be merged into its newest yet.
DROP VIEW IF EXISTS tagwerk.coview_pairs_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.coview_pairs_mv
REFRESH EVERY 1 MINUTE TO tagwerk.coview_pairs AS
SELECT site_id, product_id, other_id, sessions, last_ts FROM tagwerk.coview_pairs_settled
WHERE product_id != ''
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
        AND (site_id, session_id) NOT IN (SELECT site_id, other_id
                                          FROM tagwerk.coview_pairs_settled
                                          WHERE product_id = '')
)
ARRAY JOIN viewed AS a
ARRAY JOIN viewed AS b
WHERE a != b
GROUP BY site_id, a, b;
