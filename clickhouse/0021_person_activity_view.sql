-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
-- The old person_activity goes (its rows are in person_hits since 0020; a separate
-- migration, so that 0020 run again after an interruption still finds its source), and
-- its name stays readable for the data team's queries: a view of person_hits.
DROP TABLE IF EXISTS tagwerk.person_activity;

CREATE VIEW IF NOT EXISTS tagwerk.person_activity AS SELECT * FROM tagwerk.person_hits
