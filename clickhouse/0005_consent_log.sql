-- cluster: sharded by cityHash64(consent_id)
-- Every consent decision posted to /consent (js_snippet/DESIGN.md section 3): evidence of
-- what a person agreed to, joinable with the hits of the same site. No IP address, ever.
-- A plain MergeTree: one person's successive decisions are all kept, none replaces another.
-- `ts` is the collector's time of receipt (the browser's clock is not evidence).
CREATE TABLE IF NOT EXISTS tagwerk.consent_log
(
    consent_id String,
    ts DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    received_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    site_id LowCardinality(String),
    granted Array(LowCardinality(String)),
    denied Array(LowCardinality(String)),
    policy LowCardinality(String),
    how LowCardinality(String),
    url String CODEC(ZSTD(1)),
    device_class LowCardinality(String),
    country LowCardinality(String)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (site_id, toDate(ts), consent_id)
SETTINGS non_replicated_deduplication_window = 10000
