-- cluster: sharded by cityHash64(consent_id)
-- The consent decisions by id, for profiles (collector/identity/profile.py lists the ones a
-- person's hits were collected under). consent_log is ordered by day, for the data team,
-- in granules of 8,192 rows: each decision looked up by id cost a granule of five columns
-- decompressed (10M bench with a decision per consented device: 8 ms for two, 20 ms for
-- 64). Here the same rows are ordered by id, in granules of 256. A copy that a view fills at
-- every insert into consent_log; it keeps what consent_log keeps (no TTL: a decision is
-- evidence, and after an erasure nothing links it to the person). Duplicates of a decision
-- change nothing read from it (argMax by time); the window drops a replayed batch's anyway.
-- As in 0020, the copy runs while the new table is empty, then the view starts (see 0010
-- for a backfill's limits).
CREATE TABLE IF NOT EXISTS tagwerk.consent_by_id
(
    site_id LowCardinality(String),
    consent_id String,
    ts DateTime64(3, 'UTC'),
    granted Array(LowCardinality(String)),
    denied Array(LowCardinality(String)),
    policy LowCardinality(String),
    how LowCardinality(String)
)
ENGINE = MergeTree
ORDER BY (site_id, consent_id, ts)
SETTINGS index_granularity = 256, non_replicated_deduplication_window = 10000;

INSERT INTO tagwerk.consent_by_id (site_id, consent_id, ts, granted, denied, policy, how)
SELECT site_id, consent_id, ts, granted, denied, policy, how
FROM tagwerk.consent_log
WHERE (SELECT count() FROM tagwerk.consent_by_id) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.consent_by_id_mv TO tagwerk.consent_by_id AS
SELECT site_id, consent_id, ts, granted, denied, policy, how
FROM tagwerk.consent_log;
