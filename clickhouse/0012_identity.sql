-- cluster: replicated
-- The identity graph (collector/identity/): typed identifiers linked to persons, resolved
-- at query time, never by rewriting events. Replicated: every node resolves locally.
--
-- A person is anchored on one identifier: their user id, or, for a person nobody has
-- linked, the one identifier they were seen with; person_id is 'p_' and the first 32 hex
-- digits of SHA-256(site_id \0 kind \0 id) (collector.identity.kinds.person_id).

-- A site's own identifier kinds, beyond the built-in ones, and the number of persons one
-- identifier may be linked to before it stops linking (a QA device, a shared coupon).
ALTER TABLE tagwerk.sites ADD COLUMN IF NOT EXISTS identifier_kinds Array(String)
    AFTER drop_without_consent;
ALTER TABLE tagwerk.sites ADD COLUMN IF NOT EXISTS identity_max_persons UInt16 DEFAULT 20
    AFTER identifier_kinds;

-- One row per identifier named by an identify or alias event (the user id itself too), with
-- the person of the event's user id. A device's owner at a time is the user of its latest
-- link at or before that time: a shared device belongs to whoever logged in last, from
-- then on. Only hits with analytics consent carry identifiers (collector/events.py), and
-- placeholders ("undefined", "0"...) are dropped at ingestion, so neither can link.
CREATE TABLE IF NOT EXISTS tagwerk.identity_links
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
    INDEX idx_person person_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
ORDER BY (site_id, kind, id, ts, user_id)
TTL toDate(ts) + toIntervalDay(retention_days) WHERE retention_days > 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.identity_links_mv TO tagwerk.identity_links AS
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
FROM tagwerk.events
ARRAY JOIN arrayConcat(
    [('user', user_id), ('device', device_id)],
    arrayMap(k -> (toString(k), identifiers[k]), mapKeys(identifiers))
) AS link
WHERE type IN ('identify', 'alias') AND user_id != '' AND link.2 != '';

-- Explicit merges (admin API): person_id now resolves to into_person ('' after an undo).
-- Kept flat: merging B into A also repoints everything merged into B, so one lookup
-- resolves. Each side's anchor identifier is kept, to list the person's identifiers.
CREATE TABLE IF NOT EXISTS tagwerk.identity_merges
(
    site_id LowCardinality(String),
    person_id String,
    kind LowCardinality(String),
    id String,
    into_person String,
    into_kind LowCardinality(String),
    into_id String,
    op_id UUID,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (site_id, person_id);

-- Explicit splits (admin API): the identifier belongs to person_id whatever its links say
-- ('' after an undo: its links decide again).
CREATE TABLE IF NOT EXISTS tagwerk.identity_overrides
(
    site_id LowCardinality(String),
    kind LowCardinality(String),
    id String,
    person_id String,
    op_id UUID,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (site_id, kind, id);

-- The audit trail of merges, splits and undos: who (a fingerprint of the admin key), what,
-- when, and the rows as they were before and after, so that an operation can be undone.
CREATE TABLE IF NOT EXISTS tagwerk.identity_operations
(
    site_id LowCardinality(String),
    op_id UUID,
    op LowCardinality(String),
    target String,
    before String CODEC(ZSTD(1)),
    after String CODEC(ZSTD(1)),
    undoes Nullable(UUID),
    actor String,
    at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, at, op_id)
