-- cluster: replicated
-- A tombstone may cover a span of time: an erased person's time on a shared identifier (a
-- family tablet, a kiosk), which stays in use by others. A late hit of that time (a spool
-- replay, a batch with old timestamps) was stored before and handed to nobody; now it is
-- dropped like a hit naming an identifier that was theirs alone. The span is part of the
-- key (one identifier may hold spans of several erased persons), so the columns can have
-- no default expression: tombstones from before hold zero in both, and a zero to_ts reads
-- as no end (collector/privacy/tombstones.py), so they still cover all time.
ALTER TABLE tagwerk.privacy_tombstones
    ADD COLUMN IF NOT EXISTS from_ts DateTime64(3, 'UTC'),
    ADD COLUMN IF NOT EXISTS to_ts DateTime64(3, 'UTC'),
    MODIFY ORDER BY (site_id, subject, from_ts, to_ts)
