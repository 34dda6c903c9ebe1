-- cluster: sharded by cityHash64(path)
-- Page pre-aggregates, per page (path) and day, from page_view events. Same rules as
-- 0010: no bots; rows without analytics consent count in the totals (views, referrer
-- hosts, campaigns, channels) but not in visitors or entries, which need a device or a
-- session. Read with -Merge functions or GROUP BY; backfilled like 0010.
--
-- visitors: distinct devices (the device id, else the user id; uniq: exact up to 65,536
-- per state). referrers, campaigns, channels: page views per referrer host, utm_campaign
-- and channel (empty values left out), as maps summed by merges (sumMap).
CREATE TABLE IF NOT EXISTS tagwerk.page_daily
(
    site_id LowCardinality(String),
    day Date,
    path String,
    views SimpleAggregateFunction(sum, UInt64),
    visitors AggregateFunction(uniq, String),
    referrers SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    campaigns SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    channels SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    last_ts SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (site_id, day, path);

INSERT INTO tagwerk.page_daily
SELECT
    site_id,
    toDate(ts) AS day,
    path,
    count() AS views,
    uniqStateIf(if(device_id != '', device_id, user_id), device_id != '' OR user_id != '')
        AS visitors,
    sumMap(mapFilter((k, v) -> k != '', map(referrer_host, toUInt64(1)))) AS referrers,
    sumMap(mapFilter((k, v) -> k != '', map(utm_campaign, toUInt64(1)))) AS campaigns,
    sumMap(mapFilter((k, v) -> k != '', map(toString(channel), toUInt64(1)))) AS channels,
    max(ts) AS last_ts
FROM tagwerk.events
WHERE event = 'page_view' AND NOT is_bot
    AND (SELECT count() FROM tagwerk.page_daily) = 0
GROUP BY site_id, day, path;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.page_daily_mv TO tagwerk.page_daily AS
SELECT
    site_id,
    toDate(ts) AS day,
    path,
    count() AS views,
    uniqStateIf(if(device_id != '', device_id, user_id), device_id != '' OR user_id != '')
        AS visitors,
    sumMap(mapFilter((k, v) -> k != '', map(referrer_host, toUInt64(1)))) AS referrers,
    sumMap(mapFilter((k, v) -> k != '', map(utm_campaign, toUInt64(1)))) AS campaigns,
    sumMap(mapFilter((k, v) -> k != '', map(toString(channel), toUInt64(1)))) AS channels,
    max(ts) AS last_ts
FROM tagwerk.events
WHERE event = 'page_view' AND NOT is_bot
GROUP BY site_id, day, path;

-- Entries: a session's first page view. A session's page views span many inserts, so the
-- first one is kept as an incremental state per session, min((ts, path)) (ties of the
-- same millisecond go to the smaller path), and tagwerk.page_entries counts sessions per
-- entry page and day (the day of the session's first page view). Placed like events, so
-- a session's rows stay on one shard.
-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
CREATE TABLE IF NOT EXISTS tagwerk.session_entries
(
    site_id LowCardinality(String),
    session_id String,
    device_id String,
    user_id String,
    first SimpleAggregateFunction(min, Tuple(DateTime64(3, 'UTC'), String))
)
ENGINE = AggregatingMergeTree
ORDER BY (site_id, session_id, device_id, user_id);

INSERT INTO tagwerk.session_entries
SELECT site_id, session_id, device_id, user_id, min((ts, path)) AS first
FROM tagwerk.events
WHERE event = 'page_view' AND NOT is_bot AND session_id != ''
    AND (SELECT count() FROM tagwerk.session_entries) = 0
GROUP BY site_id, session_id, device_id, user_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS tagwerk.session_entries_mv TO tagwerk.session_entries AS
SELECT site_id, session_id, device_id, user_id, min((ts, path)) AS first
FROM tagwerk.events
WHERE event = 'page_view' AND NOT is_bot AND session_id != ''
GROUP BY site_id, session_id, device_id, user_id;

CREATE VIEW IF NOT EXISTS tagwerk.page_entries AS
SELECT site_id, toDate(first.1) AS day, first.2 AS path, count() AS entries
FROM
(
    SELECT site_id, session_id, min(first) AS first
    FROM tagwerk.session_entries
    GROUP BY site_id, session_id
)
GROUP BY site_id, day, path
