-- cluster: replicated
-- The old identity_links goes (its rows are in identity_links_by_identifier since 0028; a
-- separate migration, so that 0028 run again after an interruption still finds its
-- source), and its name stays readable for the data team's queries: a view of the links.
DROP TABLE IF EXISTS tagwerk.identity_links;

CREATE VIEW IF NOT EXISTS tagwerk.identity_links AS
SELECT * FROM tagwerk.identity_links_by_identifier
