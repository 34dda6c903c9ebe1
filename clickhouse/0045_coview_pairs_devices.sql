-- cluster: sharded by cityHash64(product_id)
-- Co-view pairs by device as well as by session (probe 67). The public "also viewed" list
-- took its candidates by sessions: one browser's sessions of a product and 49 others took
-- every candidate row, each proved nobody (one person), and a pair two persons viewed was
-- left out; 30 sessions of one pair filled the 11 session ids it kept (0043), all one
-- person's, and the check saw nobody else. Each pair now counts its `devices` (a session's
-- device: the greatest device id of its rows; the sessions without one count as one), and
-- keeps one session of each of up to 11 devices. The public list ranks by devices (summed
-- over the two tiers: a device in both counts twice, which ranks and does not prove).
--
-- The rows settled before have no devices: the daily table is kept only while every pair
-- has some, so the first refresh computes it again (0043's way).
ALTER TABLE tagwerk.coview_pairs
    ADD COLUMN IF NOT EXISTS devices UInt64 AFTER session_ids;

ALTER TABLE tagwerk.coview_pairs_settled
    ADD COLUMN IF NOT EXISTS devices UInt64 AFTER session_ids;

ALTER TABLE tagwerk.coview_pairs_settled_mv MODIFY QUERY
WITH (SELECT max(boundary) > now() - toIntervalDay(1)
             AND countIf(product_id != '' AND (empty(session_ids) OR devices = 0)) = 0
      FROM tagwerk.coview_pairs_settled) AS kept,
settled AS (
    SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last,
        max(device_id) AS device, toDateTime64(now() - toIntervalHour(1), 3, 'UTC') AS cut
    FROM tagwerk.session_items
    WHERE NOT kept
    GROUP BY site_id, session_id
    HAVING last >= now() - toIntervalDay(90) AND last < cut
        AND length(viewed) BETWEEN 2 AND 50
)
SELECT site_id, product_id, other_id, sessions, session_ids, devices, last_ts, boundary
FROM tagwerk.coview_pairs_settled
WHERE kept
UNION ALL
SELECT site_id, product_id, other_id, sum(n) AS sessions,
    groupUniqArray(11)(session) AS session_ids, count() AS devices, max(last) AS last_ts,
    any(cut) AS boundary
FROM
(
    SELECT site_id, a AS product_id, b AS other_id, device, count() AS n,
        any(session_id) AS session, max(last) AS last, any(cut) AS cut
    FROM settled
    ARRAY JOIN viewed AS a
    ARRAY JOIN viewed AS b
    WHERE a != b
    GROUP BY site_id, a, b, device
)
GROUP BY site_id, product_id, other_id
UNION ALL
SELECT site_id, '' AS product_id, session_id AS other_id, 0 AS sessions,
    [] AS session_ids, 0 AS devices, last AS last_ts, cut AS boundary
FROM settled;

ALTER TABLE tagwerk.coview_pairs_mv MODIFY QUERY
SELECT site_id, product_id, other_id, sessions, session_ids, devices, last_ts
FROM tagwerk.coview_pairs_settled
WHERE product_id != ''
UNION ALL
WITH (SELECT max(boundary) FROM tagwerk.coview_pairs_settled) AS settled_until
SELECT site_id, product_id, other_id, sum(n) AS sessions,
    groupUniqArray(11)(session) AS session_ids, count() AS devices, max(last) AS last_ts
FROM
(
    SELECT site_id, a AS product_id, b AS other_id, device, count() AS n,
        any(session_id) AS session, max(last) AS last
    FROM
    (
        SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed,
            max(last_ts) AS last, max(device_id) AS device
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
    GROUP BY site_id, a, b, device
)
GROUP BY site_id, product_id, other_id;
