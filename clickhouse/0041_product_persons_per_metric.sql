-- cluster: sharded by cityHash64(product_id)
-- The persons behind each of a product's counts: who viewed it, put it in a cart, bought it
-- (uniq states of the user id, else the device id, as `persons`, which counts them all).
-- The browser-safe lists (collector/api/recommend.py) show a product only when two persons
-- at least are behind the count they rank by: a public "top purchases" of the last hour
-- showed the two products of the one order placed in it, to anyone who knew who ordered
-- when (probe 44). `persons` could not tell: a product many viewed and one bought passed.
ALTER TABLE tagwerk.product_hourly
    ADD COLUMN IF NOT EXISTS viewers AggregateFunction(uniq, String) AFTER persons,
    ADD COLUMN IF NOT EXISTS carters AggregateFunction(uniq, String) AFTER viewers,
    ADD COLUMN IF NOT EXISTS buyers AggregateFunction(uniq, String) AFTER carters;

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
    uniqStateIf(if(user_id != '', user_id, device_id), user_id != '' OR device_id != '')
        AS persons,
    uniqStateIf(if(user_id != '', user_id, device_id),
                (user_id != '' OR device_id != '') AND event = 'view_item') AS viewers,
    uniqStateIf(if(user_id != '', user_id, device_id),
                (user_id != '' OR device_id != '') AND event = 'add_to_cart') AS carters,
    uniqStateIf(if(user_id != '', user_id, device_id),
                (user_id != '' OR device_id != '') AND event = 'purchase') AS buyers,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events_to_commerce
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id, currency;

-- The hours stored before: rows with only the new states (their sums are 0, and a uniq
-- state counts a person once however often it is merged: run again, it adds nothing).
INSERT INTO tagwerk.product_hourly (site_id, hour, product_id, currency, viewers, carters,
    buyers)
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    if(event = 'purchase', currency, '') AS currency,
    uniqStateIf(if(user_id != '', user_id, device_id),
                (user_id != '' OR device_id != '') AND event = 'view_item') AS viewers,
    uniqStateIf(if(user_id != '', user_id, device_id),
                (user_id != '' OR device_id != '') AND event = 'add_to_cart') AS carters,
    uniqStateIf(if(user_id != '', user_id, device_id),
                (user_id != '' OR device_id != '') AND event = 'purchase') AS buyers
FROM tagwerk.events
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id, currency
SETTINGS distributed_foreground_insert = 1;
