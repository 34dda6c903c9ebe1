-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- Every row keeps the number of the insert (block) that stored it, and its place in that
-- block, through merges and mutations: the export cursor's positions (collector/api/cursor.py).
-- Rows of parts merged before this share their part's first block number: the first export
-- takes them all the same.
ALTER TABLE tagwerk.events MODIFY SETTING enable_block_number_column = 1,
    enable_block_offset_column = 1
