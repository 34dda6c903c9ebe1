-- cluster: replicated
-- Erasure digests become keyed (collector/privacy/key.py): HMAC-SHA256 with the
-- installation's privacy key instead of a plain SHA-256, which anyone could test against
-- guessed identifiers. Rows written before keep their plain digests (keyed = false) and are
-- still matched as such; the key itself is never stored, only the fingerprint of the first
-- one, so that a collector configured with another key refuses to start.
ALTER TABLE tagwerk.privacy_tombstones ADD COLUMN IF NOT EXISTS keyed Bool DEFAULT false;

ALTER TABLE tagwerk.privacy_requests ADD COLUMN IF NOT EXISTS keyed Bool DEFAULT false;

CREATE TABLE IF NOT EXISTS tagwerk.privacy_key
(
    fingerprint String,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY created_at
