-- cluster: sharded by cityHash64(product_id)
-- A replayed batch must not count twice in the views. After a crash the flusher sends the
-- batch it was inserting again with the same insert_deduplication_token; events drops it
-- (its non_replicated_deduplication_window), but the views still run on the replay, and a
-- target without a deduplication window of its own stored their rows again: sums in
-- product_hourly and page_daily doubled, person_hits and identity_links held two copies
-- (found by a reviewer; test_flusher's
-- test_replay_of_a_batch_already_inserted_adds_nothing_to_the_views). With a window, each
-- target drops the view's block of a replayed insert (its token is derived from the
-- insert's), and keeps the blocks of every new batch, whose tokens differ. Every insert into
-- events carries a token (the flusher is its only writer), so no two batches' identical
-- blocks are taken for one. On a cluster the targets are replicated tables, which
-- deduplicate already; the setting changes nothing there.
ALTER TABLE tagwerk.product_hourly MODIFY SETTING non_replicated_deduplication_window = 10000;
-- cluster: sharded by cityHash64(path)
ALTER TABLE tagwerk.page_daily MODIFY SETTING non_replicated_deduplication_window = 10000;
-- cluster: sharded by cityHash64(if(device_id != '', device_id, user_id))
ALTER TABLE tagwerk.session_items MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE tagwerk.purchased_items MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE tagwerk.session_entries MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE tagwerk.person_hits MODIFY SETTING non_replicated_deduplication_window = 10000;
-- cluster: replicated
ALTER TABLE tagwerk.identity_links MODIFY SETTING non_replicated_deduplication_window = 10000;
