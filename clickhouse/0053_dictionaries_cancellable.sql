-- cluster: replicated
-- The copy's dictionaries (0032, 0052) again, each source query with a log comment, so that
-- an erasure can cancel a load under way (KILL QUERY by the comment: collector/identity/
-- link_index.py, LOADING) instead of waiting for it: a load that began before the
-- erasure's deletes may hold what they removed, and the erasure waited it out before
-- dropping it, up to a whole load (3-5 s on the 10M bench) added to its answer. The
-- queries are otherwise 0032's and 0052's.
DROP DICTIONARY IF EXISTS tagwerk.identity_links_dict;

CREATE DICTIONARY IF NOT EXISTS tagwerk.identity_links_dict
(
    hash UInt64,
    value String
)
PRIMARY KEY hash
SOURCE(CLICKHOUSE(QUERY '
    SELECT cityHash64(toString(site_id), toString(kind), id) AS hash,
           toJSONString((toString(site_id), toString(kind), id, count(),
                         arrayMap(l -> (toString(l.1), l.2),
                                  groupArraySorted(500)((ts, user_id))))) AS value
    FROM tagwerk.identity_links_by_identifier
    GROUP BY site_id, kind, id
    SETTINGS log_comment = ''tagwerk: identity links in memory'''))
LAYOUT(HASHED())
LIFETIME(0);

DROP DICTIONARY IF EXISTS tagwerk.identity_held_dict;

CREATE DICTIONARY IF NOT EXISTS tagwerk.identity_held_dict
(
    hash UInt64,
    value String
)
PRIMARY KEY hash
SOURCE(CLICKHOUSE(QUERY '
    SELECT cityHash64(toString(site_id), person_id) AS hash,
           toJSONString((toString(site_id), person_id,
                         groupUniqArray((toString(kind), id)))) AS value
    FROM tagwerk.identity_links_by_identifier
    WHERE kind != ''user''
    GROUP BY site_id, person_id
    SETTINGS log_comment = ''tagwerk: identity links in memory'''))
LAYOUT(HASHED())
LIFETIME(0);

DROP DICTIONARY IF EXISTS tagwerk.consent_decisions_dict;

CREATE DICTIONARY IF NOT EXISTS tagwerk.consent_decisions_dict
(
    hash UInt64,
    value String
)
PRIMARY KEY hash
SOURCE(CLICKHOUSE(QUERY '
    SELECT cityHash64(toString(site_id), consent_id) AS hash,
           concat(''['', toJSONString(toString(site_id)), '','', toJSONString(consent_id), '','',
                  argMax(toJSONString((granted, denied, how, policy)), ts), '','',
                  toJSONString(toString(max(ts))), '']'') AS value
    FROM tagwerk.consent_log
    GROUP BY site_id, consent_id
    SETTINGS log_comment = ''tagwerk: identity links in memory'''))
LAYOUT(HASHED())
LIFETIME(0);
