-- cluster: sharded by cityHash64(consent_id)
-- consent_by_id as a profile reads it (collector/identity/profile.py): a few dozen
-- decisions by id, each in its own granule, so each costs a compressed block of every
-- column read. The table was written in the default blocks (64 KiB-1 MiB): each id looked
-- up decompressed that much of each column. Now:
-- - blocks of 2-8 KiB, as person_hits' (0030), for every part written from now on, and
--   the existing parts rewritten at once (OPTIMIZE ... FINAL: 0.5 s for the 10M bench's
--   400k decisions);
-- - each row's decision once more as the one text a profile reads (a JSON array
--   [granted, denied, how, policy]), so that it reads `consent_id, ts, decision` instead of
--   seven columns; argMax of one column also takes one whole decision where two rows of
--   an id share a time (argMax of each column could mix them). MATERIALIZED as in 0031:
--   computed at every insert by the view (0034), for older parts by the rewrite.
-- 70 decisions by id on the 10M bench data: 17.0 ms before, 12.5 with the small blocks,
-- 11.0 packed; one: 6.5, 5.0, 4.3 ms.
ALTER TABLE tagwerk.consent_by_id MODIFY SETTING min_compress_block_size = 2048,
    max_compress_block_size = 8192;

ALTER TABLE tagwerk.consent_by_id ADD COLUMN IF NOT EXISTS decision String MATERIALIZED
    toJSONString((granted, denied, how, policy)) CODEC(ZSTD(1));

OPTIMIZE TABLE tagwerk.consent_by_id FINAL;

ALTER TABLE tagwerk.consent_by_id MATERIALIZE COLUMN decision;
