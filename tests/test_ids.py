"""collector/ingest/ids.py: event ids are RFC 9562 version-7 UUIDs, unique and time-ordered."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid

from collector.ingest import ids


def _fields(text: str) -> tuple[int, int]:
    """An id's millisecond timestamp and its 74 counter bits (rand_a, rand_b)."""
    value = uuid.UUID(text).int
    return value >> 80, (value >> 64 & 0xFFF) << 62 | value & ((1 << 62) - 1)


def test_an_id_is_a_version_7_uuid_holding_the_time_it_was_made():
    before = time.time_ns() // 1_000_000
    text = ids.uuid7()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(text)
    assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= _fields(text)[0] <= after


def test_ids_count_up_across_the_counters_carries(monkeypatch):
    """The text before the variant is kept per millisecond and counter top: where the low
    62 bits carry into rand_a, and where the 74 bits wrap, the next id still says so."""
    for start in ((5 << 62) - 2, (1 << 74) - 2):
        monkeypatch.setattr(ids, "_counter", itertools.count(start))
        made = [ids.uuid7() for _ in range(4)]
        counters = [_fields(text)[1] for text in made]
        assert counters == [(start + i) & ((1 << 74) - 1) for i in range(4)], made
        assert all(uuid.UUID(text).version == 7 for text in made)


def test_ids_are_unique_across_threads():
    made: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(ids.uuid7() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for out in made for text in out]
    assert len(set(every)) == len(every) == 80_000
    for out in made:  # each thread's ids in the order it made them
        assert [_fields(t) for t in out] == sorted(_fields(t) for t in out)


def test_a_forked_child_counts_from_a_new_random_start():
    read, write = os.pipe()
    parent_next = ids.uuid7()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out
        os.write(write, ids.uuid7().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    os.close(read)
    mine = ids.uuid7()
    # Counting on from the parent's counter, the child's id would sit next to ours.
    assert abs(_fields(child)[1] - _fields(parent_next)[1]) > 1_000_000
    assert 0 < _fields(mine)[1] - _fields(parent_next)[1] < 1_000_000  # ours counts on
