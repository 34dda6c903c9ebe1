-- cluster: replicated
-- A person's purchases with their currency (ISO 4217, '' when the hit named none): a
-- profile summed revenue in euros and francs together (collector/identity/profile.py).
-- person_hits gains the event's `currency`, and its packed `hit` (0031) gains it as its last
-- field. Rows stored before keep their `hit` as it was, one field shorter (a MATERIALIZED
-- column's new expression applies to new parts; stored values are kept): a profile reads
-- those as of no currency, as their `currency` column says.
ALTER TABLE tagwerk.events_to_persons ADD COLUMN IF NOT EXISTS currency LowCardinality(String);

ALTER TABLE tagwerk.events_to_persons_mv MODIFY QUERY
SELECT site_id, ts, event, event_id, is_bot, consent, consent_id, channel, device_class,
    device_id, user_id, user_verified, identifiers, items, retention_days, currency
FROM tagwerk.events
WHERE has(consent, 'personalization') AND NOT is_bot;

-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
ALTER TABLE tagwerk.person_hits ADD COLUMN IF NOT EXISTS currency LowCardinality(String)
    AFTER revenue;

ALTER TABLE tagwerk.person_hits MODIFY COLUMN hit String MATERIALIZED toJSONString((
    toString(cityHash64(event_id)), toString(ts), event, product_id, category, brand, channel,
    device_class, toString(quantity), toString(revenue), consent_id, toString(currency)))
    CODEC(ZSTD(1));

ALTER TABLE tagwerk.person_hits_mv MODIFY QUERY
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
    currency,
    event_id,
    retention_days
FROM tagwerk.events_to_persons
ARRAY JOIN
    if(user_id != '' AND user_verified, [concat('user:', user_id)],
       arrayConcat(if(device_id != '', [concat('device:', device_id)], []),
                   arrayMap(k -> concat(toString(k), ':', identifiers[k]), mapKeys(identifiers))))
        AS key
ARRAY JOIN
    arrayResize(items, greatest(length(items), 1)) AS item
WHERE has(consent, 'personalization') AND NOT is_bot;
