-- cluster: replicated
-- Routers in front of the views fed by events, so that an insert pays only for the views
-- its rows concern. ClickHouse plans every materialised view's query again for each block
-- inserted, whether or not a row passes its WHERE: the seven views on events cost ~18 ms of
-- CPU per insert (300 or 3,000 rows alike; the insert itself ~6 ms), which is most of what
-- the views cost ingestion (bench/load.py). A view on an ENGINE = Null table runs only when
-- a row reaches that table: one cheap filter per group decides, and the group's views are
-- not planned for an insert that has no row for them (e-mail opens and other pixel hits
-- without consent to personalization skip all seven).
--
-- Each router table holds the columns its group's views read, typed as in events, and
-- stores nothing; a view that needs another column adds it to its router (test_migrations
-- checks that the types agree with events). Each view keeps its WHERE, so a router's filter
-- only has to let through a superset of its group's rows, and the aggregates stay equal to
-- the ones recomputed from events (test_aggregates). A narrow router is cheaper than one
-- with every column of events (~5 ms of CPU less per insert over the four).
CREATE TABLE IF NOT EXISTS tagwerk.events_to_commerce
(
    site_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    event LowCardinality(String),
    is_bot Bool,
    session_id String,
    device_id String,
    user_id String,
    items Array(Tuple(product_id String, name String, category String, brand String,
        variant String, price Decimal(18, 4), quantity UInt32)),
    retention_days UInt16
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS tagwerk.events_to_pages
(
    site_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    event LowCardinality(String),
    is_bot Bool,
    session_id String,
    device_id String,
    user_id String,
    path String,
    referrer_host String,
    utm_campaign String,
    channel LowCardinality(String),
    retention_days UInt16
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS tagwerk.events_to_persons
(
    site_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    event LowCardinality(String),
    event_id UUID,
    is_bot Bool,
    consent Array(String),
    consent_id String,
    channel LowCardinality(String),
    device_class LowCardinality(String),
    device_id String,
    user_id String,
    user_verified Bool,
    identifiers Map(LowCardinality(String), String),
    items Array(Tuple(product_id String, name String, category String, brand String,
        variant String, price Decimal(18, 4), quantity UInt32)),
    retention_days UInt16
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS tagwerk.events_to_identity
(
    site_id LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    type LowCardinality(String),
    event_id UUID,
    device_id String,
    user_id String,
    identifiers Map(LowCardinality(String), String),
    retention_days UInt16
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.events_to_commerce_mv
TO tagwerk.events_to_commerce AS
SELECT site_id, ts, event, is_bot, session_id, device_id, user_id, items, retention_days
FROM tagwerk.events
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.events_to_pages_mv
TO tagwerk.events_to_pages AS
SELECT site_id, ts, event, is_bot, session_id, device_id, user_id, path, referrer_host,
    utm_campaign, channel, retention_days
FROM tagwerk.events
WHERE event = 'page_view' AND NOT is_bot;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.events_to_persons_mv
TO tagwerk.events_to_persons AS
SELECT site_id, ts, event, event_id, is_bot, consent, consent_id, channel, device_class,
    device_id, user_id, user_verified, identifiers, items, retention_days
FROM tagwerk.events
WHERE has(consent, 'personalization') AND NOT is_bot;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.events_to_identity_mv
TO tagwerk.events_to_identity AS
SELECT site_id, ts, type, event_id, device_id, user_id, identifiers, retention_days
FROM tagwerk.events
WHERE type IN ('identify', 'alias') AND user_id != '';

-- The views, each now reading its group's router (their queries otherwise as before).
ALTER TABLE tagwerk.product_hourly_mv MODIFY QUERY
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    countIf(event = 'view_item') AS views,
    countIf(event = 'add_to_cart') AS add_to_carts,
    countIf(event = 'purchase') AS purchases,
    sumIf(toUInt64(item.quantity), event = 'purchase') AS quantity,
    sumIf(toDecimal128(item.price, 4) * item.quantity, event = 'purchase') AS revenue,
    uniqStateIf(if(user_id != '', user_id, device_id), user_id != '' OR device_id != '')
        AS persons,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events_to_commerce
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id;

ALTER TABLE tagwerk.session_items_mv MODIFY QUERY
SELECT site_id, session_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts, max(retention_days) AS retention_days
FROM tagwerk.events_to_commerce
WHERE event = 'view_item' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;

ALTER TABLE tagwerk.purchased_items_mv MODIFY QUERY
SELECT site_id, device_id, user_id,
    groupUniqArrayArray(arrayFilter(p -> p != '', items.product_id)) AS products,
    max(ts) AS last_ts, max(retention_days) AS retention_days
FROM tagwerk.events_to_commerce
WHERE event = 'purchase' AND NOT is_bot AND (device_id != '' OR user_id != '')
GROUP BY site_id, device_id, user_id;

ALTER TABLE tagwerk.page_daily_mv MODIFY QUERY
SELECT
    site_id,
    toDate(ts) AS day,
    path,
    count() AS views,
    uniqStateIf(if(device_id != '', device_id, user_id), device_id != '' OR user_id != '')
        AS visitors,
    sumMap(mapFilter((k, v) -> k != '', map(referrer_host, toUInt64(1)))) AS referrers,
    sumMap(mapFilter((k, v) -> k != '', map(utm_campaign, toUInt64(1)))) AS campaigns,
    sumMap(mapFilter((k, v) -> k != '', map(toString(channel), toUInt64(1)))) AS channels,
    max(ts) AS last_ts
FROM tagwerk.events_to_pages
WHERE event = 'page_view' AND NOT is_bot
GROUP BY site_id, day, path;

ALTER TABLE tagwerk.session_entries_mv MODIFY QUERY
SELECT site_id, session_id, device_id, user_id, min((ts, path)) AS first,
    max(retention_days) AS retention_days
FROM tagwerk.events_to_pages
WHERE event = 'page_view' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;

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
FROM tagwerk.events_to_persons
ARRAY JOIN
    if(user_id != '' AND user_verified, [concat('user:', user_id)],
       arrayConcat(if(device_id != '', [concat('device:', device_id)], []),
                   arrayMap(k -> concat(toString(k), ':', identifiers[k]), mapKeys(identifiers))))
        AS key
ARRAY JOIN
    -- a hit without items: one empty item (arrayResize pads with the default)
    arrayResize(items, greatest(length(items), 1)) AS item
WHERE has(consent, 'personalization') AND NOT is_bot;

ALTER TABLE tagwerk.identity_links_mv MODIFY QUERY
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
