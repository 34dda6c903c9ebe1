-- cluster: sharded by cityHash64(product_id)
-- The browser-safe "also viewed" list needs two persons behind a pair, and counted sessions:
-- one shopper's two visits, or their phone and desktop, made a pair public and showed what
-- they looked at together (probe 65). Each pair now keeps the ids of up to 11 of the
-- sessions it counts (all of them when there are at most 10; a session is in one tier only,
-- so a reader takes the two tiers' ids together, again at most 11). The public list looks
-- up those sessions' devices (session_items, by its sort key) and resolves them through the
-- identity graph, as the top lists do (collector/api/products.py, PROVED_UP_TO).
--
-- On the 10M-event bench data the daily refresh takes about 1 s more (3.4 million ids, 42 MB
-- on disk where the table had 27), the minute's copy of it about 0.2 s more.
--
-- The ids are personal data: an erasure removes its person's sessions from both tables
-- (collector/privacy/erase.py).
ALTER TABLE tagwerk.coview_pairs
    ADD COLUMN IF NOT EXISTS session_ids Array(String) AFTER sessions;

ALTER TABLE tagwerk.coview_pairs_settled
    ADD COLUMN IF NOT EXISTS session_ids Array(String) AFTER sessions;

-- 0035's query, with the ids. The rows settled before this migration have none: the table
-- is kept only while every pair of it has its ids, so the first refresh (at the next start)
-- computes it again (and so does the first after an erasure took a pair's last ids).
ALTER TABLE tagwerk.coview_pairs_settled_mv MODIFY QUERY
WITH (SELECT max(boundary) > now() - toIntervalDay(1)
             AND countIf(product_id != '' AND empty(session_ids)) = 0
      FROM tagwerk.coview_pairs_settled) AS kept,
settled AS (
    SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last,
        toDateTime64(now() - toIntervalHour(1), 3, 'UTC') AS cut
    FROM tagwerk.session_items
    WHERE NOT kept
    GROUP BY site_id, session_id
    HAVING last >= now() - toIntervalDay(90) AND last < cut
        AND length(viewed) BETWEEN 2 AND 50
)
SELECT site_id, product_id, other_id, sessions, session_ids, last_ts, boundary
FROM tagwerk.coview_pairs_settled
WHERE kept
UNION ALL
SELECT site_id, a AS product_id, b AS other_id, count() AS sessions,
    groupUniqArray(11)(session_id) AS session_ids, max(last) AS last_ts, any(cut) AS boundary
FROM settled
ARRAY JOIN viewed AS a
ARRAY JOIN viewed AS b
WHERE a != b
GROUP BY site_id, a, b
UNION ALL
SELECT site_id, '' AS product_id, session_id AS other_id, 0 AS sessions,
    [] AS session_ids, last AS last_ts, cut AS boundary
FROM settled;

ALTER TABLE tagwerk.coview_pairs_mv MODIFY QUERY
SELECT site_id, product_id, other_id, sessions, session_ids, last_ts
FROM tagwerk.coview_pairs_settled
WHERE product_id != ''
UNION ALL
WITH (SELECT max(boundary) FROM tagwerk.coview_pairs_settled) AS settled_until
SELECT site_id, a AS product_id, b AS other_id, count() AS sessions,
    groupUniqArray(11)(session_id) AS session_ids, max(last) AS last_ts
FROM
(
    SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last
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
