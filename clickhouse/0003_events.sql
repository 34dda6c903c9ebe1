-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- One row per hit. Column names are also the wire format's field names.
-- ReplacingMergeTree with event_id in the key is the last line of deduplication;
-- the collector already drops repeated event_ids before inserting.
-- LowCardinality only on the columns reports group by: each one costs insert CPU.
CREATE TABLE IF NOT EXISTS tagwerk.events
(
    event_id UUID,
    site_id LowCardinality(String),
    event LowCardinality(String),
    type LowCardinality(String),
    ts DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    received_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    channel LowCardinality(String),
    device_id String CODEC(ZSTD(1)),
    session_id String CODEC(ZSTD(1)),
    user_id String CODEC(ZSTD(1)),
    consent Array(String),
    url String CODEC(ZSTD(1)),
    path String CODEC(ZSTD(1)),
    title String CODEC(ZSTD(1)),
    referrer String CODEC(ZSTD(1)),
    referrer_host String CODEC(ZSTD(1)),
    utm_source String CODEC(ZSTD(1)),
    utm_medium String CODEC(ZSTD(1)),
    utm_campaign String CODEC(ZSTD(1)),
    utm_term String CODEC(ZSTD(1)),
    utm_content String CODEC(ZSTD(1)),
    device_class LowCardinality(String),
    browser LowCardinality(String),
    os LowCardinality(String),
    is_bot Bool,
    country LowCardinality(String),
    region String CODEC(ZSTD(1)),
    city String CODEC(ZSTD(1)),
    language String CODEC(ZSTD(1)),
    screen String CODEC(ZSTD(1)),
    order_id String,
    revenue Decimal(18, 4),
    currency LowCardinality(String),
    coupon String,
    items Array(Tuple(
        product_id String,
        name String,
        category String,
        brand String,
        variant String,
        price Decimal(18, 4),
        quantity UInt32
    )) CODEC(ZSTD(1)),
    props Map(String, String) CODEC(ZSTD(1)),
    -- Copied from the site's setting at ingestion, so that retention is per site.
    retention_days UInt16,
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 4,
    INDEX idx_user_id user_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_device_id device_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX idx_order_id order_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (site_id, toDate(ts), event, event_id)
TTL toDate(ts) + toIntervalDay(retention_days) WHERE retention_days > 0
SETTINGS non_replicated_deduplication_window = 10000
