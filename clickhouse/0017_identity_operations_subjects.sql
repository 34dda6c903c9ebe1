-- cluster: replicated
-- Whom an identity operation touched, as values to match exactly (an erasure and an access
-- request find a person's operations by them, never by searching the JSON text): the
-- persons' ids, and the identifiers as 'kind:id'.
ALTER TABLE tagwerk.identity_operations ADD COLUMN IF NOT EXISTS persons Array(String)
    AFTER after;
ALTER TABLE tagwerk.identity_operations ADD COLUMN IF NOT EXISTS identifiers Array(String)
    AFTER persons
