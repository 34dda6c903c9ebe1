-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- Co-view pairs by client (0047) instead of by device: the public "also viewed" list ranked
-- pairs by the devices behind them (0045), and one script viewing two products from fresh
-- devices on one line made them "also viewed" together on the shop's pages. A session's
-- client is its browser's `client_hash` (an IPv4 address, an IPv6 /48, hashed with the
-- day's salt), else, for a server-side session or one stored before, its device as before:
-- the pairs settled before count the same (`devices`, renamed `clients`).
ALTER TABLE tagwerk.session_items
    ADD COLUMN IF NOT EXISTS client_hash SimpleAggregateFunction(max, UInt64) DEFAULT 0
    AFTER user_id;

ALTER TABLE tagwerk.session_items_mv MODIFY QUERY
SELECT site_id, session_id, device_id, user_id,
    max(client_hash) AS client_hash,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts,
    max(retention_days) AS retention_days
FROM tagwerk.events_to_commerce
WHERE event = 'view_item' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;

-- cluster: sharded by cityHash64(product_id)
ALTER TABLE tagwerk.coview_pairs RENAME COLUMN IF EXISTS devices TO clients;

ALTER TABLE tagwerk.coview_pairs_settled RENAME COLUMN IF EXISTS devices TO clients;

ALTER TABLE tagwerk.coview_pairs_settled_mv MODIFY QUERY
WITH (SELECT max(boundary) > now() - toIntervalDay(1)
             AND countIf(product_id != '' AND (empty(session_ids) OR clients = 0)) = 0
      FROM tagwerk.coview_pairs_settled) AS kept,
settled AS (
    SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last,
        if(max(client_hash) != 0, toString(max(client_hash)), max(device_id)) AS client,
        toDateTime64(now() - toIntervalHour(1), 3, 'UTC') AS cut
    FROM tagwerk.session_items
    WHERE NOT kept
    GROUP BY site_id, session_id
    HAVING last >= now() - toIntervalDay(90) AND last < cut
        AND length(viewed) BETWEEN 2 AND 50
)
SELECT site_id, product_id, other_id, sessions, session_ids, clients, last_ts, boundary
FROM tagwerk.coview_pairs_settled
WHERE kept
UNION ALL
SELECT site_id, product_id, other_id, sum(n) AS sessions,
    groupUniqArray(11)(session) AS session_ids, count() AS clients, max(last) AS last_ts,
    any(cut) AS boundary
FROM
(
    SELECT site_id, a AS product_id, b AS other_id, client, count() AS n,
        any(session_id) AS session, max(last) AS last, any(cut) AS cut
    FROM settled
    ARRAY JOIN viewed AS a
    ARRAY JOIN viewed AS b
    WHERE a != b
    GROUP BY site_id, a, b, client
)
GROUP BY site_id, product_id, other_id
UNION ALL
SELECT site_id, '' AS product_id, session_id AS other_id, 0 AS sessions,
    [] AS session_ids, 0 AS clients, last AS last_ts, cut AS boundary
FROM settled;

ALTER TABLE tagwerk.coview_pairs_mv MODIFY QUERY
SELECT site_id, product_id, other_id, sessions, session_ids, clients, last_ts
FROM tagwerk.coview_pairs_settled
WHERE product_id != ''
UNION ALL
WITH (SELECT max(boundary) FROM tagwerk.coview_pairs_settled) AS settled_until
SELECT site_id, product_id, other_id, sum(n) AS sessions,
    groupUniqArray(11)(session) AS session_ids, count() AS clients, max(last) AS last_ts
FROM
(
    SELECT site_id, a AS product_id, b AS other_id, client, count() AS n,
        any(session_id) AS session, max(last) AS last
    FROM
    (
        SELECT site_id, session_id, groupUniqArrayArray(products) AS viewed,
            max(last_ts) AS last,
            if(max(client_hash) != 0, toString(max(client_hash)), max(device_id)) AS client
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
    GROUP BY site_id, a, b, client
)
GROUP BY site_id, product_id, other_id;
