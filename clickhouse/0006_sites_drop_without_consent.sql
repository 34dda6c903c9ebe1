-- cluster: replicated
-- A site may drop hits without analytics consent instead of storing them stripped of
-- identifiers (web hits only: /collect and /p.gif).
ALTER TABLE tagwerk.sites ADD COLUMN IF NOT EXISTS drop_without_consent Bool DEFAULT false
    AFTER drop_bots
