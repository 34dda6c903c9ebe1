-- cluster: sharded by cityHash64(product_id)
-- Co-purchase pairs (0039) without a search of every link for every user. An identifier's
-- users by first link were found by looking up each user's first link among all the
-- identifier's links: for one held by many users (a walk-in loyalty card at the tills, a
-- shared coupon code, an attacker's e-mail on 100,000 logins) that is users x links, and the
-- refresh asked the engine for 76 GiB and failed, every 10 minutes, for every site: no
-- bought-together pair moved again. Now the links are grouped per user first (their first
-- link), and only the links of the first `cap` users, the only ones that can decide a
-- purchase, are kept in time order (a purchase's search of them no longer checks each
-- link's user against the allowed ones, cap x links). The rules are 0039's, unchanged
-- (test_copurchase).
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
    -- per identifier (not a user id): its users by first link (first link, user id), the
    -- links of the first `cap` of them in time order (no other's can decide), the site's cap
    SELECT site_id, kind, id, cap, arrayMap(u -> (u.1, u.2), by_first) AS users,
        arraySort(arrayFlatten(arrayMap(u -> arrayMap(t -> (t, u.2), u.3),
                                        arraySlice(by_first, 1, cap)))) AS links
    FROM (
        SELECT site_id, kind, id, any(cap) AS cap,
            arraySort(groupArray((first, user_id, times))) AS by_first
        FROM (
            SELECT site_id, toString(kind) AS kind, id, user_id, min(ts) AS first,
                groupArray(ts) AS times
            FROM tagwerk.identity_links_by_identifier
            WHERE kind != 'user'
            GROUP BY site_id, kind, id, user_id
        ) AS linked
        INNER JOIN (SELECT site_id, toUInt32(identity_max_persons) AS cap
                    FROM tagwerk.sites FINAL) AS caps USING (site_id)
        GROUP BY site_id, kind, id
    ) AS held
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
        multiIf(p.kind = 'user', ('user', p.id),
                s.person_id != '', ('person', s.person_id),
                empty(h.links), (p.kind, p.id),
                length(h.users) > h.cap AND p.ts >= h.users[h.cap + 1].1,
                    ('event', toString(p.event_id)),
                p.ts < h.users[1].1 AND 'p_' || lower(substring(hex(SHA256(concat(
                    p.site_id, '\0', p.kind, '\0', p.id))), 1, 32)) IN (SELECT p FROM claimed),
                    (p.kind, p.id),
                ('user', coalesce(
                    nullIf(arrayLast(l -> l.1 <= p.ts, h.links).2, ''),
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
