-- cluster: replicated
-- identity_links (0012) again, in two orders, both in granules of 1,024 rows and compressed
-- blocks of 8-32 KiB (as person_hits in 0020): a resolution reads a few identifiers' links,
-- and a read decompresses whole granules, 8,192 rows per identifier before.
--
-- - identity_links_by_identifier: every link, by (kind, id): whose an identifier is, when.
-- - identity_links_by_person: the identifiers ever linked to each user's person, one row
--   each (the latest link's time, which its retention follows). It was a bloom-filter scan
--   of identity_links by person_id.
--
-- On 10M bench events, 32 profiles resolved at once read the links in 12 ms, not 33, and
-- the held identifiers in 5 ms, not 14 (bench/persons.py for the whole profile).
-- Neither granule nor block size can be altered on a table, hence new ones; 0029 drops the
-- old table and leaves a view of its name. The old view stops first, the copy runs while
-- the new table is empty (an interrupted migration runs again: see 0010 for the backfill's
-- limits), and the view is created again on the new table last.
DROP VIEW IF EXISTS tagwerk.identity_links_mv;

CREATE TABLE IF NOT EXISTS tagwerk.identity_links_by_identifier
(
    site_id LowCardinality(String),
    kind LowCardinality(String),
    id String,
    user_id String,
    person_id String,
    ts DateTime64(3, 'UTC'),
    source LowCardinality(String),
    event_id UUID,
    retention_days UInt16,
    -- an erasure deletes a person's links by person_id
    INDEX idx_person person_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
ORDER BY (site_id, kind, id, ts, user_id)
TTL toDate(ts) + toIntervalDay(retention_days) WHERE retention_days > 0
SETTINGS index_granularity = 1024, min_compress_block_size = 8192,
    max_compress_block_size = 32768, enable_block_number_column = 1,
    enable_block_offset_column = 1, non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS tagwerk.identity_links_by_person
(
    site_id LowCardinality(String),
    person_id String,
    kind LowCardinality(String),
    id String,
    ts DateTime64(3, 'UTC'),
    retention_days UInt16
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (site_id, person_id, kind, id)
TTL toDate(ts) + toIntervalDay(retention_days) WHERE retention_days > 0
SETTINGS index_granularity = 1024, min_compress_block_size = 8192,
    max_compress_block_size = 32768, enable_block_number_column = 1,
    enable_block_offset_column = 1, non_replicated_deduplication_window = 10000;

-- Every row written to the links, by the view below, a backfill or an erasure, is a row of
-- the person's identifiers too (user ids are anchors, not held).
CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.identity_links_by_person_mv
TO tagwerk.identity_links_by_person AS
SELECT site_id, person_id, kind, id, ts, retention_days
FROM tagwerk.identity_links_by_identifier
WHERE kind != 'user';

INSERT INTO tagwerk.identity_links_by_identifier (site_id, kind, id, user_id, person_id, ts,
    source, event_id, retention_days)
SELECT site_id, kind, id, user_id, person_id, ts, source, event_id, retention_days
FROM tagwerk.identity_links
WHERE (SELECT count() FROM tagwerk.identity_links_by_identifier) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.identity_links_mv
TO tagwerk.identity_links_by_identifier AS
SELECT
    site_id,
    link.1 AS kind,
    link.2 AS id,
    user_id,
    concat('p_', substring(lower(hex(SHA256(concat(site_id, '\0user\0', user_id)))), 1, 32))
        AS person_id,
    ts,
    type AS source,
    event_id,
    retention_days
FROM tagwerk.events_to_identity
ARRAY JOIN arrayConcat(
    [('user', user_id), ('device', device_id)],
    arrayMap(k -> (toString(k), identifiers[k]), mapKeys(identifiers))
) AS link
WHERE type IN ('identify', 'alias') AND user_id != '' AND link.2 != '';
