-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- Whether a hit's user_id decides whose it is (collector/ingest/events.py): true for an
-- authenticated sender (the batch API's write key) and for a browser identify with a valid
-- identity_token; false for a browser's user_id on any other hit, which anyone can set to
-- someone else's customer number. Such a claim stays on the row for analytics, but
-- person_hits files the hit under its device (and other identifiers) like a hit without a
-- user id, so the identity graph decides whose it is: nobody can write into another
-- person's profile or purchases. Rows stored before keep their attribution (true).
ALTER TABLE tagwerk.events ADD COLUMN IF NOT EXISTS user_verified Bool DEFAULT true
    AFTER consent_id;

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
    event_id,
    retention_days
FROM tagwerk.events
ARRAY JOIN
    if(user_id != '' AND user_verified, [concat('user:', user_id)],
       arrayConcat(if(device_id != '', [concat('device:', device_id)], []),
                   arrayMap(k -> concat(toString(k), ':', identifiers[k]), mapKeys(identifiers))))
        AS key
ARRAY JOIN
    -- a hit without items: one empty item (arrayResize pads with the default)
    arrayResize(items, greatest(length(items), 1)) AS item
WHERE has(consent, 'personalization') AND NOT is_bot
