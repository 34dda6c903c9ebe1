-- cluster: sharded by cityHash64(product_id)
-- product_hourly's persons (`persons`, `viewers`, `carters`, `buyers`) as uniqCombined(12)
-- states, as its clients (0047), instead of uniq's. The public lists merge a product's
-- states over the window for the persons behind each item (collector/api/products.py:
-- `behind`, which decides which items the identity graph must prove), and uniq's states
-- keep up to 65,536 values each, merged one by one: on the 10M-event bench a day's list
-- took 0.75-1.4 s for that merge alone, 1 s of CPU whenever a public list was computed
-- (each new flush, each visitor whose purchases it leaves out). uniqCombined(12) is exact
-- up to a few thousand values (the proof's threshold is 10), then a HyperLogLog of 4,096
-- cells, and the same merge takes 60 ms.
--
-- The states cannot be converted: product_hourly is rebuilt under its own name as in 0037
-- (the view stops first and is made again last), its other columns copied as they are,
-- the persons computed again from the events with 0042's rules (a browser's user id is a
-- claim: its device counts), hours whose events a site's retention removed keep none. Run
-- again after a cut anywhere, it copies and computes the same.
DROP VIEW IF EXISTS tagwerk.product_hourly_mv;

DROP TABLE IF EXISTS tagwerk.product_hourly_0049;

CREATE TABLE IF NOT EXISTS tagwerk.product_hourly_0049
(
    site_id LowCardinality(String),
    hour DateTime('UTC'),
    product_id String,
    currency LowCardinality(String),
    views SimpleAggregateFunction(sum, UInt64),
    add_to_carts SimpleAggregateFunction(sum, UInt64),
    purchases SimpleAggregateFunction(sum, UInt64),
    quantity SimpleAggregateFunction(sum, UInt64),
    revenue SimpleAggregateFunction(sum, Decimal(38, 4)),
    persons AggregateFunction(uniqCombined(12), String),
    viewers AggregateFunction(uniqCombined(12), String),
    carters AggregateFunction(uniqCombined(12), String),
    buyers AggregateFunction(uniqCombined(12), String),
    client_views AggregateFunction(uniqCombined(12), UInt64),
    client_carts AggregateFunction(uniqCombined(12), UInt64),
    client_purchases AggregateFunction(uniqCombined(12), UInt64),
    client_interactions AggregateFunction(uniqCombined(12), UInt64),
    categories SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (site_id, hour, product_id, currency)
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO tagwerk.product_hourly_0049 (site_id, hour, product_id, currency, views,
    add_to_carts, purchases, quantity, revenue, client_views, client_carts, client_purchases,
    client_interactions, categories, last_ts)
SELECT site_id, hour, product_id, currency, views, add_to_carts, purchases, quantity, revenue,
    client_views, client_carts, client_purchases, client_interactions, categories, last_ts
FROM tagwerk.product_hourly
SETTINGS distributed_foreground_insert = 1;

INSERT INTO tagwerk.product_hourly_0049 (site_id, hour, product_id, currency, persons,
    viewers, carters, buyers)
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    if(event = 'purchase', currency, '') AS currency,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            user_id != '' AND user_verified OR device_id != '')
        AS persons,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'view_item')
        AS viewers,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'add_to_cart')
        AS carters,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'purchase')
        AS buyers
FROM tagwerk.events
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id, currency
SETTINGS distributed_foreground_insert = 1;

EXCHANGE TABLES tagwerk.product_hourly AND tagwerk.product_hourly_0049;

DROP TABLE IF EXISTS tagwerk.product_hourly_0049;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.product_hourly_mv TO tagwerk.product_hourly AS
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
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            user_id != '' AND user_verified OR device_id != '')
        AS persons,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'view_item')
        AS viewers,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'add_to_cart')
        AS carters,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'purchase')
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
