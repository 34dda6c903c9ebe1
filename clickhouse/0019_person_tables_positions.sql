-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- Rows keep the number of the insert that stored them, in the tables answers about persons
-- read (as events since 0009 and consent_log since 0018): the change feed
-- (collector/identity/changes.py) follows the tables themselves, since a materialised
-- view's rows become visible after the events they come from.
ALTER TABLE tagwerk.person_activity MODIFY SETTING enable_block_number_column = 1,
    enable_block_offset_column = 1;
-- cluster: replicated
ALTER TABLE tagwerk.identity_links MODIFY SETTING enable_block_number_column = 1,
    enable_block_offset_column = 1
