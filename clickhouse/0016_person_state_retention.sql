-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- The session and purchase state keeps device and user ids: it follows the site's retention
-- like the raw rows, identity links and person_activity (each row keeps the largest
-- retention of the hits it sums; 0 keeps it, as for events). Rows written before this
-- migration have 0: they keep the state tables' own limits.
ALTER TABLE tagwerk.session_items ADD COLUMN IF NOT EXISTS retention_days
    SimpleAggregateFunction(max, UInt16);
ALTER TABLE tagwerk.session_items_mv MODIFY QUERY
SELECT site_id, session_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts, max(retention_days) AS retention_days
FROM tagwerk.events
WHERE event = 'view_item' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;
ALTER TABLE tagwerk.session_items MODIFY TTL toDate(last_ts) + toIntervalDay(90),
    toDate(last_ts) + toIntervalDay(retention_days) WHERE retention_days > 0;

ALTER TABLE tagwerk.purchased_items ADD COLUMN IF NOT EXISTS retention_days
    SimpleAggregateFunction(max, UInt16);
ALTER TABLE tagwerk.purchased_items_mv MODIFY QUERY
SELECT site_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts, max(retention_days) AS retention_days
FROM tagwerk.events
WHERE event = 'purchase' AND NOT is_bot AND (device_id != '' OR user_id != '')
GROUP BY site_id, device_id, user_id;
ALTER TABLE tagwerk.purchased_items MODIFY TTL
    toDate(last_ts) + toIntervalDay(retention_days) WHERE retention_days > 0;

ALTER TABLE tagwerk.session_entries ADD COLUMN IF NOT EXISTS retention_days
    SimpleAggregateFunction(max, UInt16);
ALTER TABLE tagwerk.session_entries_mv MODIFY QUERY
SELECT site_id, session_id, device_id, user_id, min((ts, path)) AS first,
    max(retention_days) AS retention_days
FROM tagwerk.events
WHERE event = 'page_view' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;
ALTER TABLE tagwerk.session_entries MODIFY TTL
    toDate(first.1) + toIntervalDay(retention_days) WHERE retention_days > 0
