-- cluster: replicated
-- Privacy operations (collector/privacy/). Nothing here names a person in clear.
--
-- Identifiers erased for good: a hit naming one is dropped at ingestion, by every
-- collector, from the moment it learns of it. `subject` is
-- hex(SHA-256('tagwerk-erased' \0 site_id \0 kind \0 id)) (collector.privacy.tombstones).
CREATE TABLE IF NOT EXISTS tagwerk.privacy_tombstones
(
    site_id LowCardinality(String),
    subject String,
    request_id UUID,
    erased_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (site_id, subject);

-- The audit trail of erasures and access requests: who (a fingerprint of the admin key),
-- what (the digest of the identifier asked for, never the identifier), when, and what was
-- removed (row counts per table).
CREATE TABLE IF NOT EXISTS tagwerk.privacy_requests
(
    site_id LowCardinality(String),
    request_id UUID,
    op LowCardinality(String),
    subject String,
    identifiers UInt32,
    removed String,
    actor String,
    at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, at, request_id)
