-- cluster: replicated
-- The consent decisions by id in the engine's memory, beside the identity links (0032), so
-- that a cold profile looks up the decisions its hits were collected under without a table
-- read (collector/identity/profile.py, link_index.py). On the 10M bench, on a slow machine,
-- 70 decisions read from consent_by_id (0034, 0036) cost 17 ms, looked up here 4 ms; two
-- 6.4 and 2.5-3.4.
--
-- Per (site, consent id) its last decision as profiles list it: [site, id, [granted,
-- denied, how, policy], time] (the packed decision of 0036). Keyed by a 64-bit hash, the
-- value repeating the key, as 0032's: a collision is read from the table. 92 MB for the
-- bench's 400,000 decisions (the log keeps every decision: no TTL), loaded in 2.2 s.
-- Loaded from consent_log itself, not from consent_by_id: the collector's change feed
-- follows consent_log, and consent_by_id's rows, written by a view, commit after the log's
-- (as 0032 reads the table the feed follows). LIFETIME(0): loaded by the collector with the
-- links; a decision newer than the copy is read from consent_by_id. On a cluster each node
-- loads it through the Distributed consent_log: every shard's decisions.
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
    GROUP BY site_id, consent_id'))
LAYOUT(HASHED())
LIFETIME(0);
