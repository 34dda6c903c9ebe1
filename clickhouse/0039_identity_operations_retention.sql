-- cluster: replicated
-- Explicit merges and splits (identity_merges, identity_overrides) are identity links an
-- admin made, and their audit rows (identity_operations) name the identifiers: the site's
-- retention applies to them as to the links fed from hits (0012, 0028), counted from when
-- the operation was made (a row's version is its time in nanoseconds; operations.py). Each
-- row keeps the retention of its site when it was written; rows written before this
-- migration have 0 and are kept, as rows of the other tables before 0016.
ALTER TABLE tagwerk.identity_merges ADD COLUMN IF NOT EXISTS retention_days UInt16;

ALTER TABLE tagwerk.identity_merges MODIFY TTL
    toDate(fromUnixTimestamp64Nano(toInt64(version))) + toIntervalDay(retention_days)
    WHERE retention_days > 0;

ALTER TABLE tagwerk.identity_overrides ADD COLUMN IF NOT EXISTS retention_days UInt16;

ALTER TABLE tagwerk.identity_overrides MODIFY TTL
    toDate(fromUnixTimestamp64Nano(toInt64(version))) + toIntervalDay(retention_days)
    WHERE retention_days > 0;

ALTER TABLE tagwerk.identity_operations ADD COLUMN IF NOT EXISTS retention_days UInt16;

ALTER TABLE tagwerk.identity_operations MODIFY TTL
    toDate(at) + toIntervalDay(retention_days) WHERE retention_days > 0
