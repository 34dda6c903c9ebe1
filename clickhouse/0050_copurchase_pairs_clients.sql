-- cluster: sharded by cityHash64(product_id)
-- Bought-together pairs count their buyers' clients too (0047), for the public "bought
-- together" list (collector/api/products.py), which needs two and ranks by them: a browser's
-- purchase is as unauthenticated as its views, and fresh devices buying two products from
-- one line each made a buyer, so two of them made the pair public. A buyer's client is the
-- client hash of their purchases (the greatest, of several), else (a server-side sale, a
-- purchase stored before) the buyer themselves. 0046's rules, otherwise unchanged.
ALTER TABLE tagwerk.copurchase_pairs ADD COLUMN IF NOT EXISTS clients UInt64 AFTER buyers;

ALTER TABLE tagwerk.copurchase_pairs_mv MODIFY QUERY
WITH
purchases AS (
    -- each purchase with the identifier that decides whose it is
    SELECT site_id, event_id, ts, client_hash,
        arrayDistinct(arrayFilter(p -> p != '', items.product_id)) AS products,
        multiIf(user_id != '' AND user_verified, 'user', device_id != '', 'device',
                toString(arrayMin(mapKeys(identifiers)))) AS kind,
        multiIf(kind = 'user', user_id, kind = 'device', device_id, identifiers[kind]) AS id
    FROM tagwerk.events
    WHERE event = 'purchase' AND NOT is_bot AND notEmpty(products) AND id != ''
),
users AS (
    -- per identifier (not a user id) and user: the user's first link to it
    SELECT site_id, toString(kind) AS kind, id, user_id, min(ts) AS first
    FROM tagwerk.identity_links_by_identifier
    WHERE kind != 'user'
    GROUP BY site_id, kind, id, user_id
),
holders AS (
    -- per identifier: its first user and first link, its last allowed user by first link
    -- (the site's cap-th), and since when it is nobody's (the first link of the user past
    -- the cap), as scalars: a purchase's row carries them, whatever the counts
    SELECT site_id, kind, id, by_first[1].2 AS first_user, by_first[1].1 AS first_link,
        by_first[least(cap, length(by_first))] AS last_allowed,
        length(by_first) > cap AS capped, by_first[cap + 1].1 AS cut
    FROM (
        SELECT site_id, kind, id, any(cap) AS cap,
            arraySort(groupArray((first, user_id))) AS by_first
        FROM users
        INNER JOIN (SELECT site_id, toUInt32(identity_max_persons) AS cap
                    FROM tagwerk.sites FINAL) AS caps USING (site_id)
        GROUP BY site_id, kind, id
    ) AS held
),
allowed AS (
    -- the links of each identifier's allowed users (no other's decide), one a moment (of
    -- two at once, the greater user id's, as a sort of (time, user) ends)
    SELECT l.site_id AS site_id, l.kind AS kind, l.id AS id, l.ts AS ts,
        max(l.user_id) AS user_id
    FROM (SELECT site_id, toString(kind) AS kind, id, user_id, ts
          FROM tagwerk.identity_links_by_identifier WHERE kind != 'user') AS l
    INNER JOIN users AS u
        ON l.site_id = u.site_id AND l.kind = u.kind AND l.id = u.id AND l.user_id = u.user_id
    INNER JOIN holders AS h ON l.site_id = h.site_id AND l.kind = h.kind AND l.id = h.id
    WHERE (u.first, u.user_id) <= h.last_allowed
    GROUP BY site_id, kind, id, ts
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
        p.client_hash AS client_hash,
        multiIf(p.kind = 'user', ('user', p.id),
                s.person_id != '', ('person', s.person_id),
                h.first_user = '', (p.kind, p.id),
                h.capped AND p.ts >= h.cut, ('event', toString(p.event_id)),
                p.ts < h.first_link AND 'p_' || lower(substring(hex(SHA256(concat(
                    p.site_id, '\0', p.kind, '\0', p.id))), 1, 32)) IN (SELECT p FROM claimed),
                    (p.kind, p.id),
                ('user', if(a.user_id != '', a.user_id, h.first_user))) AS anchor
    FROM purchases AS p
    LEFT JOIN holders AS h ON p.site_id = h.site_id AND p.kind = h.kind AND p.id = h.id
    LEFT JOIN (SELECT site_id, toString(kind) AS kind, id, person_id
               FROM tagwerk.identity_overrides FINAL WHERE person_id != '') AS s
        ON p.site_id = s.site_id AND p.kind = s.kind AND p.id = s.id
    -- the latest link of an allowed user at or before the purchase
    ASOF LEFT JOIN allowed AS a
        ON p.site_id = a.site_id AND p.kind = a.kind AND p.id = a.id AND p.ts >= a.ts
),
anchors AS (
    -- what each anchor bought, with its person's id (an erased owner's: nobody's)
    SELECT site_id, anchor, groupUniqArrayArray(products) AS bought, max(ts) AS last,
        max(client_hash) AS client,
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
        groupUniqArrayArray(a.bought) AS bought, max(a.last) AS last,
        max(a.client) AS client
    FROM anchors AS a
    LEFT JOIN (SELECT site_id, person_id, into_person FROM tagwerk.identity_merges FINAL
               WHERE into_person != '') AS m
        ON a.site_id = m.site_id AND a.person = m.person_id
    GROUP BY site_id, buyer
    HAVING length(bought) BETWEEN 2 AND 200
)
SELECT site_id, a AS product_id, b AS other_id, count() AS buyers,
    uniqExact(if(client != 0, client, cityHash64(buyer))) AS clients, max(last) AS last_ts
FROM buyers
ARRAY JOIN bought AS a
ARRAY JOIN bought AS b
WHERE a != b
GROUP BY site_id, a, b;
