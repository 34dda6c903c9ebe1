-- cluster: sharded by cityHash64(consent_id)
-- A person's profile lists the consent decisions their hits were collected under
-- (events.consent_id): found by id, whatever the day.
ALTER TABLE tagwerk.consent_log ADD INDEX IF NOT EXISTS idx_consent_id consent_id
    TYPE bloom_filter(0.01) GRANULARITY 4
