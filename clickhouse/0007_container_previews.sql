-- cluster: replicated
-- Preview links for a draft container: a token (stored as its SHA-256) lets the browser that
-- opened the link load /t/{site}.js with the draft instead of the live version, until it
-- expires. Every collector of a cluster sees them.
CREATE TABLE IF NOT EXISTS tagwerk.container_previews
(
    site_id String,
    token_hash String,
    expires_at DateTime64(3, 'UTC'),
    created_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, token_hash)
TTL toDateTime(expires_at) + INTERVAL 1 DAY
