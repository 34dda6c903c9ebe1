-- cluster: sharded by cityHash64(product_id)
-- Product pre-aggregates for the recommendation endpoints (collector/api/products.py) and
-- the data team. Read them with -Merge functions or GROUP BY, never as stored rows: a
-- background merge may not have folded an insert's rows in yet.
--
-- Feeding rules, in every view below: bots (is_bot) feed nothing; rows without analytics
-- consent have empty device, session and user ids (collector/events.py) and count in
-- product totals only, never in anything keyed by a person, a session or a device.
-- Items are events.items; the GA4 names the tag and the demo shop send: view_item,
-- add_to_cart, purchase. Revenue of a product is price * quantity of its purchase items.
--
-- Backfill: a materialised view sees only the inserts made after it exists. Each target
-- is filled from the events already stored, when it is still empty, before its view is
-- created (an interrupted migration runs again: the guard keeps that from counting twice).
-- Events inserted between a backfill and its view's creation would be missed: `tagwerk
-- serve` migrates before its flusher starts; on a cluster, migrate before the collectors.
--
-- 1. Per product and hour. Incremental: every insert adds a few rows of partial sums,
-- which merges fold together. Fresh as soon as the flusher's insert returns.
-- persons: distinct person identifiers (the user id, else the device id) that viewed,
-- added or bought the product; uniq is exact up to 65,536 per state, then estimated.
-- categories: every category the product's items named, for ?category= filters.
-- On a cluster each shard's view writes the rows of that shard's events (sharded by
-- device): a product's rows are on every shard and queries sum them (GROUP BY).
CREATE TABLE IF NOT EXISTS tagwerk.product_hourly
(
    site_id LowCardinality(String),
    hour DateTime('UTC'),
    product_id String,
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
ORDER BY (site_id, hour, product_id);

INSERT INTO tagwerk.product_hourly
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    countIf(event = 'view_item') AS views,
    countIf(event = 'add_to_cart') AS add_to_carts,
    countIf(event = 'purchase') AS purchases,
    sumIf(toUInt64(item.quantity), event = 'purchase') AS quantity,
    sumIf(toDecimal128(item.price, 4) * item.quantity, event = 'purchase') AS revenue,
    uniqStateIf(if(user_id != '', user_id, device_id), user_id != '' OR device_id != '')
        AS persons,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
    AND (SELECT count() FROM tagwerk.product_hourly) = 0
GROUP BY site_id, hour, product_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.product_hourly_mv TO tagwerk.product_hourly AS
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    countIf(event = 'view_item') AS views,
    countIf(event = 'add_to_cart') AS add_to_carts,
    countIf(event = 'purchase') AS purchases,
    sumIf(toUInt64(item.quantity), event = 'purchase') AS quantity,
    sumIf(toDecimal128(item.price, 4) * item.quantity, event = 'purchase') AS revenue,
    uniqStateIf(if(user_id != '', user_id, device_id), user_id != '' OR device_id != '')
        AS persons,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id;

-- 2. Pairs need state. An incremental view sees one insert, but a session's views span
-- many inserts (one every 250 ms), so a pair of items viewed a minute apart is never in
-- one block. Reading the pair table's own state from inside the view would depend on the
-- order in which views run and race with concurrent inserts (several collectors). So:
-- (a) incremental state tables, exact at every insert: the products each session viewed,
-- and the products each device/user bought; (b) refreshable views that recompute the
-- pair counts from that state every minute and swap the result in atomically.
-- Freshness of co-view and co-purchase: one minute plus a refresh's run time (the product
-- aggregates above are fresh at insert). Sessions of the last 90 days count; a session that
-- viewed more than 50 distinct products (a crawler that says it is none) and a buyer of
-- more than 200 are left out: their pairs are noise and grow with the square.
--
-- The state tables are placed like events (cityHash64(device id, else user id)): a
-- session's and a device's rows stay on one shard, so each shard's refresh counts its own
-- sessions completely, and the Distributed pair table sums the shards. A user who bought
-- from several devices may be on several shards: on a cluster, their purchases are paired
-- per device.
-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
CREATE TABLE IF NOT EXISTS tagwerk.session_items
(
    site_id LowCardinality(String),
    session_id String,
    device_id String,
    user_id String,
    products SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (site_id, session_id, device_id, user_id)
TTL toDate(last_ts) + toIntervalDay(90);

INSERT INTO tagwerk.session_items
SELECT site_id, session_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts
FROM tagwerk.events
WHERE event = 'view_item' AND NOT is_bot AND session_id != ''
    AND (SELECT count() FROM tagwerk.session_items) = 0
GROUP BY site_id, session_id, device_id, user_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.session_items_mv TO tagwerk.session_items AS
SELECT site_id, session_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts
FROM tagwerk.events
WHERE event = 'view_item' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;

-- The products each device/user bought, keyed by both ids as the purchase row had them:
-- the browser-safe recommendations leave out what the visitor's device bought (a key
-- prefix lookup), co-purchase pairs products by buyer (the user id, else the device id).
CREATE TABLE IF NOT EXISTS tagwerk.purchased_items
(
    site_id LowCardinality(String),
    device_id String,
    user_id String,
    products SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (site_id, device_id, user_id);

INSERT INTO tagwerk.purchased_items
SELECT site_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts
FROM tagwerk.events
WHERE event = 'purchase' AND NOT is_bot AND (device_id != '' OR user_id != '')
    AND (SELECT count() FROM tagwerk.purchased_items) = 0
GROUP BY site_id, device_id, user_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.purchased_items_mv TO tagwerk.purchased_items AS
SELECT site_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts
FROM tagwerk.events
WHERE event = 'purchase' AND NOT is_bot AND (device_id != '' OR user_id != '')
GROUP BY site_id, device_id, user_id;

-- Pair tables hold both orders of each pair, so "related to X" is a key prefix read.
-- Written only by their refreshable views; on a cluster each node computes its own copy
-- from its local state (a plain MergeTree per node, not replicated) and the Distributed
-- table on top sums the shards.
-- cluster: sharded by cityHash64(product_id)
CREATE TABLE IF NOT EXISTS tagwerk.coview_pairs
(
    site_id LowCardinality(String),
    product_id String,
    other_id String,
    sessions UInt64,
    last_ts DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, product_id, other_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.coview_pairs_mv
REFRESH EVERY 1 MINUTE TO tagwerk.coview_pairs AS
SELECT site_id, a AS product_id, b AS other_id, count() AS sessions, max(last) AS last_ts
FROM
(
    SELECT site_id, groupUniqArrayArray(products) AS viewed, max(last_ts) AS last
    FROM tagwerk.session_items
    GROUP BY site_id, session_id
    HAVING last >= now() - toIntervalDay(90) AND length(viewed) BETWEEN 2 AND 50
)
ARRAY JOIN viewed AS a
ARRAY JOIN viewed AS b
WHERE a != b
GROUP BY site_id, a, b;

CREATE TABLE IF NOT EXISTS tagwerk.copurchase_pairs
(
    site_id LowCardinality(String),
    product_id String,
    other_id String,
    buyers UInt64,
    last_ts DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, product_id, other_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.copurchase_pairs_mv
REFRESH EVERY 1 MINUTE TO tagwerk.copurchase_pairs AS
SELECT site_id, a AS product_id, b AS other_id, count() AS buyers, max(last) AS last_ts
FROM
(
    SELECT site_id, groupUniqArrayArray(products) AS bought, max(last_ts) AS last
    FROM tagwerk.purchased_items
    GROUP BY site_id, if(user_id != '', 'user:' || user_id, 'device:' || device_id)
    HAVING length(bought) BETWEEN 2 AND 200
)
ARRAY JOIN bought AS a
ARRAY JOIN bought AS b
WHERE a != b
GROUP BY site_id, a, b
