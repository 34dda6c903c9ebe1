-- cluster: replicated
-- The identity links in the engine's memory, so that resolving who a profile is about
-- reads no table (collector/identity/link_index.py). A resolution reads the links of a few
-- identifiers and the identifiers a few persons hold: a few dozen rows, but on the 10M
-- bench each such table read costs 8-11 ms (planning, index analysis, a pipeline of
-- threads) where a dictGet of the same keys costs 3 ms.
--
-- - identity_links_dict: per identifier, how many links it has and its first 500 by time
--   as [ts, user_id] (what graph.LINKS_OF reads; past 500 the graph reads the table).
-- - identity_held_dict: per user's person, the identifiers ever linked to it (graph.HELD),
--   from the same table as the links (identity_links_by_person holds the same, but its
--   view commits after the links' part: a load in between would miss a link the change
--   feed, which follows identity_links_by_identifier, already reported).
--
-- Keyed by a 64-bit hash, each value a JSON text that repeats the key: on the bench a
-- String-keyed dictionary took 285 MB (400 MB with Array values), this one 117 MB. The
-- reader checks the repeated key, so a collision (or an identifier crafted to collide)
-- makes it read the tables, never take one identifier's links for another's.
-- LIFETIME(0): loaded and reloaded by the collector only, which learns from its change
-- feed which links are newer than the copy, and reads those from the tables.
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
    GROUP BY site_id, kind, id'))
LAYOUT(HASHED())
LIFETIME(0);

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
    GROUP BY site_id, person_id'))
LAYOUT(HASHED())
LIFETIME(0);
