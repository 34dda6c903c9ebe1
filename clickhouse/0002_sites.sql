-- cluster: replicated
-- One row per site and change; the newest `updated_at` wins (read with FINAL).
-- Keys are stored as SHA-256 hex digests, never in clear.
CREATE TABLE IF NOT EXISTS tagwerk.sites
(
    site_id String,
    name String,
    origins Array(String),
    write_key_hash String,
    read_key_hash String,
    admin_key_hash String,
    retention_days UInt16 DEFAULT 0,   -- 0 keeps events forever
    drop_bots Bool DEFAULT false,
    deleted Bool DEFAULT false,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY site_id
