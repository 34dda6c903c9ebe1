-- cluster: replicated
-- A copy of person_hits (0030, 0031) by key, for cold profiles (collector/identity/
-- link_index.py, profile.py): one value per (site, key), its packed hits joined by commas,
-- read by a point lookup per key. On the 10M bench a profile batch of 32 persons (113 keys)
-- read person_hits in 22-45 ms (the primary key's search of a 113-key set over 32k marks,
-- 280 granules read for 4,000 rows), this copy in 4-9 ms.
--
-- k: site_id, a NUL, key (a site id holds no NUL). hits: '' when the key has more than the
-- copy keeps (the reader reads such a person from person_hits). Filled and kept by the
-- collector on the embedded engine only, where every load is its own (it cancels one
-- under way before an erasure answers): built whole into person_hits_copy_next, exchanged,
-- then only the keys its change feed reports are read again; truncated when an erasure
-- drops the identity links' copy, or when nobody reads it; built whole again every hour
-- (rows a retention TTL removed, which the feed does not report, stay until then: the
-- TTL's own merges come every 4 hours). On a server it stays empty.
-- bulk_insert_block_size: a whole build sorted in memory peaked at 4.9 GB on the bench; in
-- blocks of 4,096 keys the query stays under 400 MB.
CREATE TABLE IF NOT EXISTS tagwerk.person_hits_copy
(
    k String,
    hits String
)
ENGINE = EmbeddedRocksDB
PRIMARY KEY k
SETTINGS bulk_insert_block_size = 4096;

CREATE TABLE IF NOT EXISTS tagwerk.person_hits_copy_next
(
    k String,
    hits String
)
ENGINE = EmbeddedRocksDB
PRIMARY KEY k
SETTINGS bulk_insert_block_size = 4096;
