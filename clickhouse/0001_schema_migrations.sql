-- cluster: replicated
-- Which migrations have been applied. Written by `tagwerk migrate`, one row per file.
CREATE TABLE IF NOT EXISTS tagwerk.schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
