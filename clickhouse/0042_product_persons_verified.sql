-- cluster: replicated
-- A browser's user_id on a hit is a claim (0023_user_verified.sql): the identity graph files
-- such a hit under its device. product_hourly's persons counted it under the claimed user id,
-- and so did the browser-safe lists' two-person rule (collector/api/products.py): anyone
-- could put a customer's id on a purchase of their own, and a product that then stayed off
-- the public list told that this customer was its only other buyer (probe 64). Persons are
-- now counted as the graph files hits: a user id when verified, else the device. The states
-- of hours stored before keep the claims they counted (a uniq state cannot drop a value);
-- the public lists check every item with few persons against the events all the same.
ALTER TABLE tagwerk.events_to_commerce
    ADD COLUMN IF NOT EXISTS user_verified Bool DEFAULT true AFTER user_id;

ALTER TABLE tagwerk.events_to_commerce_mv MODIFY QUERY
SELECT site_id, ts, event, is_bot, session_id, device_id, user_id, user_verified, items,
    retention_days, currency
FROM tagwerk.events
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot;

-- cluster: sharded by cityHash64(product_id)
-- 0041's view, each person a verified user id, else the device.
ALTER TABLE tagwerk.product_hourly_mv MODIFY QUERY
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    if(event = 'purchase', currency, '') AS currency,
    countIf(event = 'view_item') AS views,
    countIf(event = 'add_to_cart') AS add_to_carts,
    countIf(event = 'purchase') AS purchases,
    sumIf(toUInt64(item.quantity), event = 'purchase') AS quantity,
    sumIf(toDecimal128(item.price, 4) * item.quantity, event = 'purchase') AS revenue,
    uniqStateIf(if(user_id != '' AND user_verified, user_id, device_id),
                user_id != '' AND user_verified OR device_id != '')
        AS persons,
    uniqStateIf(if(user_id != '' AND user_verified, user_id, device_id),
                (user_id != '' AND user_verified OR device_id != '') AND event = 'view_item')
        AS viewers,
    uniqStateIf(if(user_id != '' AND user_verified, user_id, device_id),
                (user_id != '' AND user_verified OR device_id != '') AND event = 'add_to_cart')
        AS carters,
    uniqStateIf(if(user_id != '' AND user_verified, user_id, device_id),
                (user_id != '' AND user_verified OR device_id != '') AND event = 'purchase')
        AS buyers,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events_to_commerce
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id, currency;
