-- cluster: sharded by cityHash64(consent_id)
-- Each consent_by_id row's decision once more, as the one text a profile reads
-- (collector/identity/profile.py): a JSON array [granted, denied, how, policy]. A profile
-- looks up a few dozen decisions by id, each in its own granule, and every column read
-- costs a granule's decompression per id: reading `consent_id, ts, decision` instead of
-- seven columns takes 70 decisions from 15.4 to 10.0 ms on the 10M bench data (one part),
-- one from 4.8 to 3.7 ms. argMax of one column also takes the whole of one decision where
-- two rows of an id have the same time (argMax of each column could mix them).
-- The columns stay for SQL; as in 0031, MATERIALIZED: computed at every insert by the
-- view (0034), and for parts written before at read time until MATERIALIZE COLUMN has
-- stored it there.
ALTER TABLE tagwerk.consent_by_id ADD COLUMN IF NOT EXISTS decision String MATERIALIZED
    toJSONString((granted, denied, how, policy)) CODEC(ZSTD(1));

ALTER TABLE tagwerk.consent_by_id MATERIALIZE COLUMN decision;
