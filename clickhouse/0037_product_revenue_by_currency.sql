-- cluster: sharded by cityHash64(product_id)
-- Revenue per currency: product_hourly summed every purchase's price * quantity whatever its
-- currency, so a shop selling in EUR and CHF ranked products by a meaningless total. Its
-- rows are now also keyed by `currency`: a purchase's (ISO 4217, '' when it named none);
-- views and add-to-carts are filed under ''. Counts, quantities and unique persons are
-- summed over currencies as before (GROUP BY product_id; uniq states merge).
--
-- Rebuilt under its own name like person_hits (0030): the view stops first, a copy with the
-- new key is filled with the old rows as they are and exchanged, and the view starts again
-- last. Old rows knew no currency, so the copy also moves, for every purchase still in
-- events, its revenue from '' to its currency: a row of -revenue under '' and one of
-- +revenue under the currency (the sum stays the same; an hour's purchases whose raw rows
-- a retention TTL already removed stay under ''). The old table holds no row with a
-- currency until the exchange, so a migration run again after it copies the rows and moves
-- nothing a second time.
DROP VIEW IF EXISTS tagwerk.product_hourly_mv;

ALTER TABLE tagwerk.product_hourly ADD COLUMN IF NOT EXISTS currency LowCardinality(String)
    AFTER product_id;

DROP TABLE IF EXISTS tagwerk.product_hourly_0037;

CREATE TABLE IF NOT EXISTS tagwerk.product_hourly_0037
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
    persons AggregateFunction(uniq, String),
    categories SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (site_id, hour, product_id, currency)
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO tagwerk.product_hourly_0037 (site_id, hour, product_id, currency, views,
    add_to_carts, purchases, quantity, revenue, persons, categories, last_ts)
SELECT site_id, hour, product_id, currency, views, add_to_carts, purchases, quantity, revenue,
    persons, categories, last_ts
FROM tagwerk.product_hourly
SETTINGS distributed_foreground_insert = 1;

INSERT INTO tagwerk.product_hourly_0037 (site_id, hour, product_id, currency, revenue)
SELECT site_id, hour, product_id, pair.1 AS currency, pair.2 AS revenue
FROM
(
    SELECT site_id, toStartOfHour(ts) AS hour, item.product_id AS product_id, currency AS sold_in,
        sum(toDecimal128(item.price, 4) * item.quantity) AS sold
    FROM tagwerk.events
    ARRAY JOIN items AS item
    WHERE event = 'purchase' AND NOT is_bot AND item.product_id != '' AND currency != ''
        AND (SELECT count() FROM tagwerk.product_hourly WHERE currency != '') = 0
    GROUP BY site_id, hour, product_id, sold_in
    HAVING sold != 0
)
ARRAY JOIN [('', -sold), (sold_in, sold)] AS pair
SETTINGS distributed_foreground_insert = 1;

EXCHANGE TABLES tagwerk.product_hourly AND tagwerk.product_hourly_0037;

DROP TABLE IF EXISTS tagwerk.product_hourly_0037;

-- cluster: replicated
ALTER TABLE tagwerk.events_to_commerce ADD COLUMN IF NOT EXISTS currency LowCardinality(String);

ALTER TABLE tagwerk.events_to_commerce_mv MODIFY QUERY
SELECT site_id, ts, event, is_bot, session_id, device_id, user_id, items, retention_days,
    currency
FROM tagwerk.events
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot;

-- cluster: sharded by cityHash64(product_id)
-- The view as before, with `currency` (the alias names the target's column; inside it,
-- `currency` is the event's).
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
    uniqStateIf(if(user_id != '', user_id, device_id), user_id != '' OR device_id != '')
        AS persons,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events_to_commerce
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id, currency;
