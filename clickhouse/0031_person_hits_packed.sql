-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- Each person_hits row once more, as the one text a profile reads (collector/identity/
-- profile.py): a JSON array of the hit's fields. A profile reads a few dozen rows under
-- each of a person's keys in every part of the table, and each column it reads costs a
-- granule's decompression per key and part: reading `key, hit` instead of twelve columns
-- takes 32 cold profiles' rows from 61 to 42 ms on the 10M bench data (6 parts), one
-- person's from 13.6 to 7.9 ms, for about as much disk again as the table's columns.
-- The columns stay for SQL (and `SELECT *`, which leaves a MATERIALIZED column out).
--
-- MATERIALIZED: computed from the row at every insert (no view or client can set it), and
-- for parts written before, at read time until MATERIALIZE COLUMN has stored it there.
-- toString() fixes each value's text whatever the session's output settings: ts as the
-- links' spans are compared with it, revenue exactly, the event's id (only told apart
-- from the other rows of one person: its 64-bit hash) as a string.
ALTER TABLE tagwerk.person_hits ADD COLUMN IF NOT EXISTS hit String MATERIALIZED toJSONString((
    toString(cityHash64(event_id)), toString(ts), event, product_id, category, brand, channel,
    device_class, toString(quantity), toString(revenue), consent_id)) CODEC(ZSTD(1));

ALTER TABLE tagwerk.person_hits MATERIALIZE COLUMN hit;
