"""The privacy key (collector/privacy/key.py): erasure digests keyed with it, one key for
every collector of a ClickHouse, tombstones of the old unkeyed form still honoured."""

from __future__ import annotations

import os
import stat
import uuid

import orjson
import pytest

from collector.privacy import key as privacy_key
from collector.privacy.tombstones import ALWAYS, Tombstones, plain_subject
from collector.service import Collector
from tests.helpers import TEST_PRIVACY_KEY, collector_settings

KEY = TEST_PRIVACY_KEY.encode()


def hit(user: str = "", device: str = "", **identifiers: str) -> dict:
    return {"ts": "2026-11-30 10:00:00.000", "user_id": user, "device_id": device,
            "identifiers": identifiers}


def test_digests_depend_on_the_key_and_not_only_on_the_identifier(store):
    """A plain SHA-256 of 'user:c-17' can be recomputed by anyone who guesses c-17; an
    HMAC needs the key, which ClickHouse never holds."""
    ours, other = Tombstones(store, KEY), Tombstones(store, b"x" * 32)
    assert ours.subject("s", "user", "c-17") == ours.subject("s", "user", "c-17")
    assert ours.subject("s", "user", "c-17") != other.subject("s", "user", "c-17")
    assert ours.subject("s", "user", "c-17") != plain_subject("s", "user", "c-17")
    assert ours.subject("s", "user", "c-17") != ours.subject("t", "user", "c-17")
    found = store.rows("SELECT count() AS n FROM system.columns WHERE database = 'tagwerk' "
                       "AND table = 'privacy_key' AND name NOT IN ('fingerprint', "
                       "'created_at')")
    assert found == [{"n": 0}]  # only the fingerprint is stored, never the key


def test_without_a_configured_key_one_is_made_once_readable_by_the_owner(tmp_path):
    made = privacy_key.load("", tmp_path)
    path = tmp_path / privacy_key.FILE
    assert len(made) == 64 and privacy_key.load("", tmp_path) == made
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert privacy_key.load("k" * 40, tmp_path) == b"k" * 40  # the configured one wins


def test_a_short_configured_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 32 characters"):
        privacy_key.load("secret", tmp_path)


def test_a_collector_with_another_key_refuses_to_start(store, tmp_path):
    """Its tombstones would not match the others' digests, nor theirs its own: erasures
    would silently not be honoured across collectors."""
    privacy_key.check(store, KEY)  # the session's key is (or becomes) the recorded one
    with pytest.raises(privacy_key.KeyMismatch, match="TAGWERK_PRIVACY_KEY"):
        privacy_key.check(store, b"another key of at least thirty-two bytes")
    collector = Collector(collector_settings(tmp_path, demo_site=False,
                                             privacy_key="y" * 40), store=store)
    try:
        with pytest.raises(privacy_key.KeyMismatch):
            collector.start()
    finally:
        collector.spool.close()
    privacy_key.check(store, KEY)  # still fine for the right key


def test_tombstones_of_the_unkeyed_form_still_block(store):
    """Erasures made before digests were keyed stay honoured."""
    site = f"legacy-{uuid.uuid4().hex[:6]}"
    store.insert("tagwerk.privacy_tombstones", orjson.dumps(
        {"site_id": site, "subject": plain_subject(site, "user", "gone"),
         "request_id": str(uuid.uuid4()), "erased_at": "2026-01-01 00:00:00.000"}),
        "JSONEachRow")
    tombstones = Tombstones(store, KEY)
    assert tombstones.load()
    assert tombstones.blocks(site, hit(user="gone"))
    assert not tombstones.blocks(site, hit(user="kept", device="d1"))
    tombstones.add(site, {tombstones.subject(site, "loyalty", "L-1"): ALWAYS}, str(uuid.uuid4()))
    assert tombstones.blocks(site, hit(loyalty="L-1"))
    fresh = Tombstones(store, KEY)
    fresh.load()
    assert fresh.blocks(site, hit(loyalty="L-1")) and fresh.blocks(site, hit(user="gone"))


def test_a_span_tombstone_blocks_only_its_time(store):
    """An erased person's past time on a shared device: hits of that time are dropped, the
    device's hits before and after are not (from this collector and, loaded, another)."""
    site = f"span-{uuid.uuid4().hex[:6]}"
    tombstones = Tombstones(store, KEY)
    span = (("2026-11-10 07:00:00.000", "2026-11-12 09:00:00.000"),)
    tombstones.add(site, {tombstones.subject(site, "device", "tablet"): span},
                   str(uuid.uuid4()))
    other = Tombstones(store, KEY)
    other.load()
    for t in (tombstones, other):
        at = [{**hit(device="tablet"), "ts": ts} for ts in (
            "2026-11-10 06:59:59.999", "2026-11-10 07:00:00.000", "2026-11-12 08:59:59.999",
            "2026-11-12 09:00:00.000")]
        assert [t.blocks(site, row) for row in at] == [False, True, True, False]



def test_serve_with_another_key_refuses_with_a_message_and_exits_cleanly(tmp_path):
    """The operator sees why, and the process ends with uvicorn's start-up failure code,
    not a crash of the engine's threads at exit (it was a segmentation fault)."""
    import subprocess
    import sys

    from tests.servers import Server, free_port

    data = tmp_path / "var"
    first = Server(data).start()  # the session's key (conftest): its fingerprint recorded
    first.stop()
    refused = subprocess.run(
        [sys.executable, "-m", "collector", "serve", "--data-dir", str(data),
         "--port", str(free_port()), "--sql-port", str(free_port())],
        env={**os.environ, "TAGWERK_PRIVACY_KEY": "z" * 40}, capture_output=True, text=True,
        timeout=60)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "TAGWERK_PRIVACY_KEY" in refused.stderr
