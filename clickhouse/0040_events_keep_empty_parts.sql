-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- Export and stream cursors stand at block numbers (collector/api/cursor.py), and the engine
-- numbers the next insert after the highest part it holds when it starts. A part whose rows
-- all went (retention's TTL, deletes, collapsing) was removed about 40 s later: when it was
-- the newest (a batch with old timestamps, alone in its month, then past the site's
-- retention), a restart numbered the next insert as that part, and a cursor handed out
-- before skipped those rows for good (probe 44). Emptied parts are kept: a few bytes of
-- metadata each, merged with their partition's others as usual.
ALTER TABLE tagwerk.events MODIFY SETTING remove_empty_parts = 0;
