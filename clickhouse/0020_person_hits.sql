-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- person_activity (0013) again, as tagwerk.person_hits, in granules of 1,024 rows and
-- compressed blocks of 8-32 KiB instead of 8,192 rows and 64 KiB-1 MiB: a person's rows
-- are a few primary-key ranges, and a read decompresses whole granules, so a profile read
-- 8,192 rows per key for the few dozen it needed (10M events: 20 ms for one key, 6 ms per
-- extra key; now 12 ms and 1 ms). Neither setting can be altered on a table, hence a new
-- one; 0021 drops the old table and leaves a view of the old name for queries that use it.
-- Same rows, same view query; the old view stops first, and the copy runs while the new
-- table is empty (an interrupted migration runs again: see 0010 for the backfill's limits).
DROP VIEW IF EXISTS tagwerk.person_activity_mv;

CREATE TABLE IF NOT EXISTS tagwerk.person_hits
(
    site_id LowCardinality(String),
    key String,
    ts DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    event LowCardinality(String),
    channel LowCardinality(String),
    device_class LowCardinality(String),
    user_id String CODEC(ZSTD(1)),
    device_id String CODEC(ZSTD(1)),
    identifiers Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    consent_id String CODEC(ZSTD(1)),
    product_id String,
    category String CODEC(ZSTD(1)),
    brand String CODEC(ZSTD(1)),
    quantity UInt32,
    revenue Decimal(18, 4),
    event_id UUID,
    retention_days UInt16
)
ENGINE = ReplacingMergeTree
ORDER BY (site_id, key, ts, event_id, product_id)
TTL toDate(ts) + toIntervalDay(retention_days) WHERE retention_days > 0
SETTINGS index_granularity = 1024, min_compress_block_size = 8192,
    max_compress_block_size = 32768, enable_block_number_column = 1,
    enable_block_offset_column = 1;

INSERT INTO tagwerk.person_hits (site_id, key, ts, event, channel, device_class, user_id,
    device_id, identifiers, consent_id, product_id, category, brand, quantity, revenue,
    event_id, retention_days)
SELECT site_id, key, ts, event, channel, device_class, user_id, device_id, identifiers,
    consent_id, product_id, category, brand, quantity, revenue, event_id, retention_days
FROM tagwerk.person_activity
WHERE (SELECT count() FROM tagwerk.person_hits) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.person_hits_mv TO tagwerk.person_hits AS
SELECT
    site_id,
    key,
    ts,
    event,
    channel,
    device_class,
    user_id,
    device_id,
    identifiers,
    consent_id,
    tupleElement(item, 'product_id') AS product_id,
    tupleElement(item, 'category') AS category,
    tupleElement(item, 'brand') AS brand,
    tupleElement(item, 'quantity') AS quantity,
    tupleElement(item, 'price') * tupleElement(item, 'quantity') AS revenue,
    event_id,
    retention_days
FROM tagwerk.events
ARRAY JOIN
    if(user_id != '', [concat('user:', user_id)],
       arrayConcat(if(device_id != '', [concat('device:', device_id)], []),
                   arrayMap(k -> concat(toString(k), ':', identifiers[k]), mapKeys(identifiers))))
        AS key
ARRAY JOIN
    -- a hit without items: one empty item (arrayResize pads with the default)
    arrayResize(items, greatest(length(items), 1)) AS item
WHERE has(consent, 'personalization') AND NOT is_bot
