-- cluster: sharded by cityHash64(product_id)
-- The engine keeps no record of a refreshable view's refreshes across a restart: it
-- refreshes each of them as soon as it starts. For the minute's views that is one refresh
-- early; the daily co-view refresh (0025), though, regrouped 90 days of sessions at every
-- start of the collector (5-6 s and ~9 CPU-seconds on the 10M-event bench data, growing
-- with the data), on the core that serves hits. Now a refresh less than a day after the
-- boundary the table holds keeps the table's rows (copied: ~0.1 s there) and pairs no
-- session: the scheduled refresh (at 01:00, 25 hours after the last boundary) and any
-- refresh after a missed one still recompute. A start between 00:00 and 01:00 recomputes,
-- and the 01:00 refresh then keeps that: the settled tier lags at most two days, and the
-- minute's view pairs every session after its boundary, so coview_pairs stays whole.
--
-- `kept` is a constant of the statement (a scalar subquery): when it holds, the read of
-- session_items is empty by its WHERE and costs nothing. To recompute at once (after
-- changing the rules of pairing, say), empty the table first: TRUNCATE TABLE
-- tagwerk.coview_pairs_settled, then SYSTEM REFRESH VIEW tagwerk.coview_pairs_settled_mv.
ALTER TABLE tagwerk.coview_pairs_settled_mv MODIFY QUERY
WITH (SELECT max(boundary) > now() - toIntervalDay(1) FROM tagwerk.coview_pairs_settled)
    AS kept,
settled AS (
    SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last,
        toDateTime64(now() - toIntervalHour(1), 3, 'UTC') AS cut
    FROM tagwerk.session_items
    WHERE NOT kept
    GROUP BY site_id, session_id
    HAVING last >= now() - toIntervalDay(90) AND last < cut
        AND length(viewed) BETWEEN 2 AND 50
)
SELECT site_id, product_id, other_id, sessions, last_ts, boundary
FROM tagwerk.coview_pairs_settled
WHERE kept
UNION ALL
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
