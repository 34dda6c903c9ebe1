-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- Further identifiers of the person behind a hit (e-mail digest, loyalty card, till
-- customer...; device and user ids keep their own columns), and the consent decision
-- (consent_log.consent_id) the hit was collected under: the log is joinable with the hits.
ALTER TABLE tagwerk.events ADD COLUMN IF NOT EXISTS identifiers Map(LowCardinality(String), String)
    CODEC(ZSTD(1)) AFTER retention_days;
ALTER TABLE tagwerk.events ADD COLUMN IF NOT EXISTS consent_id String CODEC(ZSTD(1))
    AFTER identifiers;
-- A person's rows are found by any of their identifiers (collector/identity/graph.py).
ALTER TABLE tagwerk.events ADD INDEX IF NOT EXISTS idx_identifiers mapValues(identifiers)
    TYPE bloom_filter(0.01) GRANULARITY 4
