-- cluster: replicated
-- A client counts once per product and hour *of receipt* (0047 counted per hour of `ts`): a
-- browser may date its hits up to 31 days back (a queue the tag kept offline), so one
-- request of 168 views, each dated an hour earlier, counted as 168 clients on the week's
-- public top. A browser's client is now paired with the hour its hit was received in; a
-- server-side hit (no client hash: the shop's own systems, trusted) keeps its own time, so
-- that a till's replayed history counts each hour's customers. The rows themselves stay
-- filed by `ts` (windows are of event time): a hit dated back lands in its hour's row with
-- the value of the hour it came in, which the window's merge counts once.
--
-- And a day's salt has a TTL besides the collectors' deletion (collector/enrich/
-- client_hash.py), for a ClickHouse no collector looks at after midnight.
--
-- (0049 says uniqCombined(12) is exact up to a few thousand values: it is exact up to 256,
-- then a HyperLogLog; the proof's threshold, 10, is far below either.)
ALTER TABLE tagwerk.client_salts MODIFY TTL day + toIntervalDay(1);

ALTER TABLE tagwerk.events_to_commerce
    ADD COLUMN IF NOT EXISTS received_at DateTime64(3, 'UTC') AFTER ts;

ALTER TABLE tagwerk.events_to_commerce_mv MODIFY QUERY
SELECT site_id, ts, received_at, event, is_bot, session_id, device_id, user_id, user_verified,
    client_hash, items, retention_days, currency
FROM tagwerk.events
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot;

-- cluster: sharded by cityHash64(product_id)
ALTER TABLE tagwerk.product_hourly_mv MODIFY QUERY
SELECT
    site_id,
    toStartOfHour(ts) AS hour,
    item.product_id AS product_id,
    if(event = 'purchase', currency, '') AS currency,
    countIf(event = 'view_item') AS views,
    countIf(event = 'add_to_cart') AS add_to_carts,
    countIf(event = 'purchase') AS purchases,
    sumIf(toUInt64(item.quantity), event = 'purchase') AS quantity,
    sumIf(toDecimal128(item.price, 4) * item.quantity, event = 'purchase') AS revenue,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            user_id != '' AND user_verified OR device_id != '')
        AS persons,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'view_item')
        AS viewers,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'add_to_cart')
        AS carters,
    uniqCombinedStateIf(12)(if(user_id != '' AND user_verified, user_id, device_id),
                            (user_id != '' AND user_verified OR device_id != '')
                                AND event = 'purchase')
        AS buyers,
    uniqCombinedStateIf(12)(cityHash64(
                   if(client_hash != 0, toStartOfHour(received_at), toStartOfHour(ts)),
                   if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id)))),
                (client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
                    AND event = 'view_item')
        AS client_views,
    uniqCombinedStateIf(12)(cityHash64(
                   if(client_hash != 0, toStartOfHour(received_at), toStartOfHour(ts)),
                   if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id)))),
                (client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
                    AND event = 'add_to_cart')
        AS client_carts,
    uniqCombinedStateIf(12)(cityHash64(
                   if(client_hash != 0, toStartOfHour(received_at), toStartOfHour(ts)),
                   if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id)))),
                (client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
                    AND event = 'purchase')
        AS client_purchases,
    uniqCombinedStateIf(12)(cityHash64(
                   if(client_hash != 0, toStartOfHour(received_at), toStartOfHour(ts)),
                   if(client_hash != 0, client_hash,
                   cityHash64(if(user_id != '' AND user_verified, user_id, device_id))), event),
                client_hash != 0 OR user_id != '' AND user_verified OR device_id != '')
        AS client_interactions,
    groupUniqArrayIf(item.category, item.category != '') AS categories,
    max(ts) AS last_ts
FROM tagwerk.events_to_commerce
ARRAY JOIN items AS item
WHERE event IN ('view_item', 'add_to_cart', 'purchase') AND NOT is_bot
    AND item.product_id != ''
GROUP BY site_id, hour, product_id, currency;
