-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- session_items (0010, 0016) again, in granules of 256 rows instead of 8,192 and compressed
-- blocks of 2-8 KiB instead of 64 KiB-1 MiB (a look-up decompresses a block of each column
-- it reads, as 0030 found for person_hits): the public
-- "also viewed" list looks up the rows of a few dozen sessions by their ids (0043,
-- collector/api/products.py SESSION_KEYS), and 48 sessions of the 10M-event bench hit 143
-- of the table's 276 granules (1.1 million rows read, 45-75 ms); the minute's co-view
-- refresh reads its recent sessions by id too. In granules of 256 rows the same look-up
-- reads a few dozen granules.
--
-- Rebuilt under its own name as 0030 rebuilt person_hits: a copy in the new layout is
-- filled, the two are exchanged and the old one dropped; the view stops first and starts
-- again last. (Migrations run with the refreshable views stopped: the co-view refreshes,
-- which read this table, do not run meanwhile.)
DROP VIEW IF EXISTS tagwerk.session_items_mv;

DROP TABLE IF EXISTS tagwerk.session_items_0044;

CREATE TABLE IF NOT EXISTS tagwerk.session_items_0044
(
    site_id LowCardinality(String),
    session_id String,
    device_id String,
    user_id String,
    products SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    retention_days SimpleAggregateFunction(max, UInt16)
)
ENGINE = AggregatingMergeTree
ORDER BY (site_id, session_id, device_id, user_id)
TTL toDate(last_ts) + toIntervalDay(90),
    toDate(last_ts) + toIntervalDay(retention_days) WHERE retention_days > 0
SETTINGS index_granularity = 256, min_compress_block_size = 2048,
    max_compress_block_size = 8192, non_replicated_deduplication_window = 10000;

INSERT INTO tagwerk.session_items_0044 (site_id, session_id, device_id, user_id, products,
    last_ts, retention_days)
SELECT site_id, session_id, device_id, user_id, products, last_ts, retention_days
FROM tagwerk.session_items
-- (on a cluster, through the Distributed tables: every row on its shard before the exchange)
SETTINGS distributed_foreground_insert = 1;

EXCHANGE TABLES tagwerk.session_items AND tagwerk.session_items_0044;

DROP TABLE IF EXISTS tagwerk.session_items_0044;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.session_items_mv TO tagwerk.session_items AS
SELECT site_id, session_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts,
    max(retention_days) AS retention_days
FROM tagwerk.events_to_commerce
WHERE event = 'view_item' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;
