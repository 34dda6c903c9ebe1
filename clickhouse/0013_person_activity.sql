-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- What a person did, for profiles and "leave out what they bought" (collector/identity/
-- profile.py): a narrow copy of the hits with personalization consent, filed under the
-- identifier that decides whose they are, so that a person's rows are primary-key lookups:
-- a hit with a user id under 'user:<id>'; one without, under each of its identifiers
-- ('device:<id>', 'loyalty:<id>'...), to be kept or not by the identity graph's spans at
-- query time. One row per item (one with product_id '' for a hit without items). Bots and
-- hits without personalization consent never get here.
CREATE TABLE IF NOT EXISTS tagwerk.person_activity
(
    site_id LowCardinality(String),
    key String,
    ts DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    event LowCardinality(String),
    channel LowCardinality(String),
    device_class LowCardinality(String),
    user_id String CODEC(ZSTD(1)),
    device_id String CODEC(ZSTD(1)),
    identifiers Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    consent_id String CODEC(ZSTD(1)),
    product_id String,
    category String CODEC(ZSTD(1)),
    brand String CODEC(ZSTD(1)),
    quantity UInt32,
    revenue Decimal(18, 4),
    event_id UUID,
    retention_days UInt16
)
ENGINE = ReplacingMergeTree
ORDER BY (site_id, key, ts, event_id, product_id)
TTL toDate(ts) + toIntervalDay(retention_days) WHERE retention_days > 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.person_activity_mv TO tagwerk.person_activity AS
SELECT
    site_id,
    key,
    ts,
    event,
    channel,
    device_class,
    user_id,
    device_id,
    identifiers,
    consent_id,
    tupleElement(item, 'product_id') AS product_id,
    tupleElement(item, 'category') AS category,
    tupleElement(item, 'brand') AS brand,
    tupleElement(item, 'quantity') AS quantity,
    tupleElement(item, 'price') * tupleElement(item, 'quantity') AS revenue,
    event_id,
    retention_days
FROM tagwerk.events
ARRAY JOIN
    if(user_id != '', [concat('user:', user_id)],
       arrayConcat(if(device_id != '', [concat('device:', device_id)], []),
                   arrayMap(k -> concat(toString(k), ':', identifiers[k]), mapKeys(identifiers))))
        AS key
ARRAY JOIN
    -- a hit without items: one empty item (arrayResize pads with the default)
    arrayResize(items, greatest(length(items), 1)) AS item
WHERE has(consent, 'personalization') AND NOT is_bot
