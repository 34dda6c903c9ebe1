-- cluster: replicated
-- Containers (js_snippet/DESIGN.md section 1): one draft per site, immutable published
-- versions, and the release history; the live version is the latest release.
-- Documents are stored as the JSON text that was validated (collector/containers.py).
CREATE TABLE IF NOT EXISTS tagwerk.container_drafts
(
    site_id String,
    document String CODEC(ZSTD(3)),
    policy_hash String,
    tag_path String,                   -- the custom tag path, resolved, or empty
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY site_id;

-- Never updated: a version is written once. Should two processes publish the same number
-- at once, the row with the earliest (created_at, publish_id) is that version.
CREATE TABLE IF NOT EXISTS tagwerk.container_versions
(
    site_id String,
    version UInt32,
    document String CODEC(ZSTD(3)),
    policy_hash String,
    tag_path String,
    note String,
    publish_id UUID,
    created_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, version, created_at, publish_id);

-- One row per publish or rollback; the newest (released_at, release_id) is live.
CREATE TABLE IF NOT EXISTS tagwerk.container_releases
(
    site_id String,
    version UInt32,
    action LowCardinality(String),     -- publish or rollback
    note String,
    release_id UUID,
    released_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (site_id, released_at, release_id)
