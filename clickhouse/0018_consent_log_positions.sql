-- cluster: sharded by cityHash64(consent_id)
-- Every consent decision keeps the number of the insert that stored it, as events do since
-- 0009: the person answers' change feed (collector/identity/changes.py) reads the decisions
-- stored since it last looked, to refresh the profiles that list them.
ALTER TABLE tagwerk.consent_log MODIFY SETTING enable_block_number_column = 1,
    enable_block_offset_column = 1
