-- cluster: replicated
-- The consent decisions by id in the engine's memory, beside the identity links (0032), so
-- that a cold profile looks up the decisions its hits were collected under without a table
-- read (collector/identity/profile.py, link_index.py). On the 10M bench, 70 decisions read
-- from consent_by_id (0034) cost 17 ms, the same looked up here 4 ms; two 6.4 and 2.5-3.4.
--
-- Per (site, consent id) its last decision as profiles list it: [site, id, [granted,
-- denied, how, policy], time] (consent_by_id's packed decision, 0036). Keyed by a 64-bit
-- hash, the value repeating the key, as 0032's: a collision is read from the table. 92 MB
-- for the bench's 400,000 decisions, loaded in 2.2 s. LIFETIME(0): loaded by the
-- collector with the links, which reads a decision newer than the copy from the table
-- (its change feed follows consent_log). On a cluster each node loads it through the
-- Distributed consent_by_id: every shard's decisions.
CREATE DICTIONARY IF NOT EXISTS tagwerk.consent_decisions_dict
(
    hash UInt64,
    value String
)
PRIMARY KEY hash
SOURCE(CLICKHOUSE(QUERY '
    SELECT cityHash64(toString(site_id), consent_id) AS hash,
           concat(''['', toJSONString(toString(site_id)), '','', toJSONString(consent_id), '','',
                  argMax(decision, ts), '','', toJSONString(toString(max(ts))), '']'') AS value
    FROM tagwerk.consent_by_id
    GROUP BY site_id, consent_id'))
LAYOUT(HASHED())
LIFETIME(0);
