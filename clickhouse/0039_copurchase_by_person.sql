-- cluster: sharded by cityHash64(product_id)
-- Co-purchase pairs per person, as collector/identity/graph.py resolves persons, where 0010
-- paired per buyer key (the user id, else the device id): one person's purchase before
-- logging in and their purchase after were two buyers, two persons' anonymous purchases on a
-- shared tablet were one, and a till's purchase under a loyalty card was nobody's.
--
-- Whose a purchase is (the graph's rules, at the purchase's time):
-- - a verified user id decides (0023: a browser's claim does not, its device does);
-- - else its identifiers, the device first, then the others by kind: an admin's split gives
--   an identifier to its person; one nobody linked is its own person; else it belongs to the
--   user of its latest link at or before the purchase among its first `identity_max_persons`
--   users (by first link), before its first link to its first user (or to its own person if
--   an admin merged that with another); from the first link of a user past the cap on, and
--   after its owner was erased, nobody's. The first identifier that names a person decides;
-- - an admin's merge then names the person merged into.
-- A purchase that is nobody's pairs only its own items (its event is its buyer).
--
-- Read from events (the purchases with their times), not purchased_items (one row per device
-- and user id: no time to resolve a shared device by). On a cluster each node pairs the
-- purchases of its shard (sharded by device) with the replicated links, as before.
--
-- The cost: on the 10M-event bench data (600,000 purchases, 960,000 links) a refresh takes
-- about 5 s of one core where pairing per buyer key took 0.6 s, so it runs every 10 minutes
-- instead of every minute (the same CPU over time): bought-together pairs are slow to move.
ALTER TABLE tagwerk.copurchase_pairs_mv MODIFY QUERY
WITH
purchases AS (
    -- each purchase with the identifier that decides whose it is
    SELECT site_id, event_id, ts,
        arrayDistinct(arrayFilter(p -> p != '', items.product_id)) AS products,
        multiIf(user_id != '' AND user_verified, 'user', device_id != '', 'device',
                toString(arrayMin(mapKeys(identifiers)))) AS kind,
        multiIf(kind = 'user', user_id, kind = 'device', device_id, identifiers[kind]) AS id
    FROM tagwerk.events
    WHERE event = 'purchase' AND NOT is_bot AND notEmpty(products) AND id != ''
),
holders AS (
    -- per identifier (not a user id): its links in time order, its users by first link
    -- (first link, user id), the site's cap
    SELECT site_id, kind, id, links, cap,
        arraySort(arrayMap(u -> (arrayFirst(l -> l.2 = u, links).1, u),
                           arrayDistinct(links.2))) AS users
    FROM (
        SELECT site_id, toString(kind) AS kind, id, arraySort(groupArray((ts, user_id))) AS links
        FROM tagwerk.identity_links_by_identifier
        WHERE kind != 'user'
        GROUP BY site_id, kind, id
    ) AS linked
    INNER JOIN (SELECT site_id, toUInt32(identity_max_persons) AS cap
                FROM tagwerk.sites FINAL) AS caps USING (site_id)
),
claimed AS (
    -- persons an admin merged with another, either way
    SELECT person_id AS p FROM tagwerk.identity_merges FINAL WHERE into_person != ''
    UNION ALL
    SELECT into_person FROM tagwerk.identity_merges FINAL WHERE into_person != ''
),
anchored AS (
    -- each purchase's anchor then: ('user', user id), (kind, id) for the identifier's own
    -- person, ('person', person id) for a split's, ('event', event id) for nobody
    SELECT p.site_id AS site_id, p.ts AS ts, p.products AS products,
        arraySlice(h.users, 1, h.cap).2 AS allowed,
        multiIf(p.kind = 'user', ('user', p.id),
                s.person_id != '', ('person', s.person_id),
                empty(h.links), (p.kind, p.id),
                length(h.users) > h.cap AND p.ts >= h.users[h.cap + 1].1,
                    ('event', toString(p.event_id)),
                p.ts < h.users[1].1 AND 'p_' || lower(substring(hex(SHA256(concat(
                    p.site_id, '\0', p.kind, '\0', p.id))), 1, 32)) IN (SELECT p FROM claimed),
                    (p.kind, p.id),
                ('user', coalesce(
                    nullIf(arrayLast(l -> l.1 <= p.ts AND has(allowed, l.2), h.links).2, ''),
                    h.users[1].2))) AS anchor
    FROM purchases AS p
    LEFT JOIN holders AS h ON p.site_id = h.site_id AND p.kind = h.kind AND p.id = h.id
    LEFT JOIN (SELECT site_id, toString(kind) AS kind, id, person_id
               FROM tagwerk.identity_overrides FINAL WHERE person_id != '') AS s
        ON p.site_id = s.site_id AND p.kind = s.kind AND p.id = s.id
),
anchors AS (
    -- what each anchor bought, with its person's id (an erased owner's: nobody's)
    SELECT site_id, anchor, groupUniqArrayArray(products) AS bought, max(ts) AS last,
        multiIf(anchor.1 = 'person', anchor.2, anchor.1 = 'event', '',
                anchor.1 = 'user' AND startsWith(anchor.2, '\0'), '',
                'p_' || lower(substring(hex(SHA256(concat(
                    site_id, '\0', anchor.1, '\0', anchor.2))), 1, 32))) AS person
    FROM anchored
    GROUP BY site_id, anchor
),
buyers AS (
    -- per person, after an admin's merges (what is nobody's pairs only its own items)
    SELECT a.site_id AS site_id,
        multiIf(a.person = '', 'event:' || a.anchor.2,
                m.into_person != '', m.into_person, a.person) AS buyer,
        groupUniqArrayArray(a.bought) AS bought, max(a.last) AS last
    FROM anchors AS a
    LEFT JOIN (SELECT site_id, person_id, into_person FROM tagwerk.identity_merges FINAL
               WHERE into_person != '') AS m
        ON a.site_id = m.site_id AND a.person = m.person_id
    GROUP BY site_id, buyer
    HAVING length(bought) BETWEEN 2 AND 200
)
SELECT site_id, a AS product_id, b AS other_id, count() AS buyers, max(last) AS last_ts
FROM buyers
ARRAY JOIN bought AS a
ARRAY JOIN bought AS b
WHERE a != b
GROUP BY site_id, a, b;

-- cluster: replicated
ALTER TABLE tagwerk.copurchase_pairs_mv MODIFY REFRESH EVERY 10 MINUTE;
