-- cluster: replicated
-- The client behind a browser's hit, for the shop's public lists (collector/api/products.py).
-- Browsers' hits are not authenticated and device ids cost nothing to mint: one script
-- sending views from fresh devices made any product the most viewed and trending on the
-- shop's own pages. The public lists now rank by clients, each counted once per product,
-- hour and kind of interaction (a view, an add-to-cart, a purchase).
--
-- A client is a public IPv4 address or IPv6 /48 (collector/enrich/client_hash.py), stored
-- only as `events.client_hash`: a keyed hash (BLAKE2b) of the site and that network with
-- the day's salt, a random value shared by the collectors through this table and deleted
-- once its day is over, after which no hash can be traced back to an address (with the
-- salt, hashing every IPv4 address would). As the device id, only on hits with analytics
-- consent; 0 on server-side hits (the batch API's senders are the shop's own systems),
-- on hits from an address that is not public, and on rows stored before.
CREATE TABLE IF NOT EXISTS tagwerk.client_salts
(
    day Date,
    salt String,
    made DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = MergeTree
ORDER BY day;

-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
ALTER TABLE tagwerk.events ADD COLUMN IF NOT EXISTS client_hash UInt64 DEFAULT 0
    AFTER user_verified;

-- cluster: replicated
ALTER TABLE tagwerk.events_to_commerce
    ADD COLUMN IF NOT EXISTS client_hash UInt64 DEFAULT 0 AFTER user_verified;

ALTER TABLE tagwerk.events_to_commerce_mv MODIFY QUERY
SELECT site_id, ts, event, is_bot, session_id, device_id, user_id, user_verified, client_hash,
    items, retention_days, currency
FROM tagwerk.events
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot;

-- cluster: sharded by cityHash64(product_id)
-- Each count of an hour with each client counted once: `client_views`, `client_carts`,
-- `client_purchases`, states of the distinct (hour, client) pairs, the client being the
-- client hash, else (a server-side hit, a row stored before) the person as `viewers` counts
-- them. With the hour in the value, the states of a window's hours merge into the sum of
-- each hour's clients (no pair repeats across hours): one merge per product, where merging
-- each hour's state apart took 256 MB for a day's list on the bench. uniqCombined(12):
-- exact for a few values, then a HyperLogLog of 4,096 cells (about 1.6% off, 3 KB a state
-- at most): it only ranks. The day's 5,000 products on the bench merge in 25 ms where uniq's
-- states took 740 (uniq keeps up to 65,536 values a state, each merged one by one); at 14
-- bits, 65 ms. `client_interactions`: the three in one (pairs of an hour and a client, for
-- each kind of hit), which trending counts: merging the three apart, for the recent and the
-- baseline hours, took past 256 MB over a week with four threads.
ALTER TABLE tagwerk.product_hourly
    ADD COLUMN IF NOT EXISTS client_views AggregateFunction(uniqCombined(12), UInt64) AFTER buyers,
    ADD COLUMN IF NOT EXISTS client_carts AggregateFunction(uniqCombined(12), UInt64) AFTER client_views,
    ADD COLUMN IF NOT EXISTS client_purchases AggregateFunction(uniqCombined(12), UInt64)
        AFTER client_carts,
    ADD COLUMN IF NOT EXISTS client_interactions AggregateFunction(uniqCombined(12), UInt64)
        AFTER client_purchases;

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
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts), if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id)))),
                (client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
                    AND event = 'view_item')
        AS client_views,
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts), if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id)))),
                (client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
                    AND event = 'add_to_cart')
        AS client_carts,
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts), if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id)))),
                (client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
                    AND event = 'purchase')
        AS client_purchases,
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts), if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id))), event),
                client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
        AS client_interactions,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events_to_commerce
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id, currency;

-- The hours stored before: rows with only the new states, each client the person hashed (a
-- uniq state counts a value once however often it is merged: run again, it adds nothing).
INSERT INTO tagwerk.product_hourly (site_id, hour, product_id, currency, client_views,
    client_carts, client_purchases, client_interactions)
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    if(event = 'purchase', currency, '') AS currency,
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts),
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id))),
                (user_id != '' AND user_verified OR device_id != '') AND event = 'view_item')
        AS client_views,
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts),
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id))),
                (user_id != '' AND user_verified OR device_id != '') AND event = 'add_to_cart')
        AS client_carts,
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts),
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id))),
                (user_id != '' AND user_verified OR device_id != '') AND event = 'purchase')
        AS client_purchases,
    uniqCombinedStateIf(12)(cityHash64(toStartOfHour(ts),
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id)), event),
                user_id != '' AND user_verified OR device_id != '')
        AS client_interactions
FROM tagwerk.events
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != '' AND client_hash = 0
GROUP BY site_id, hour, product_id, currency
SETTINGS distributed_foreground_insert = 1;
