"""The spool: durable appends, torn tails, rotation, limits, checkpoints."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from collector.spool.disk import Checkpoint, Pos, Spool, SpoolError, SpoolFull


def append_all(spool: Spool, payloads: list[bytes]) -> None:
    async def go():
        await asyncio.gather(*(spool.append(p) for p in payloads))

    asyncio.run(go())


def read_all(spool: Spool) -> list[bytes]:
    out, _ = spool.read(spool.checkpoint.flushed, spool.durable, 1 << 30)
    return out


def test_append_read_release(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30)
    payloads = [f"record {i}".encode() for i in range(100)]
    append_all(spool, payloads)
    assert sorted(read_all(spool)) == sorted(payloads)
    assert spool.fsyncs < 100  # group commit: many records per fsync
    spool.release(spool.durable)
    assert read_all(spool) == []
    assert spool.unflushed_bytes() == 0
    spool.close()
    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert read_all(reopened) == []
    reopened.close()


def test_unflushed_records_survive_a_restart(tmp_path):
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [b"a", b"b"])
    spool.close()
    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert read_all(reopened) == [b"a", b"b"]
    reopened.close()


def test_torn_tail_is_cut_off(tmp_path):
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [b"whole"])
    spool.close()
    [segment] = tmp_path.glob("*.seg")
    with open(segment, "ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")  # a crash in the middle of a write
    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert read_all(reopened) == [b"whole"]
    append_all(reopened, [b"next"])
    assert read_all(reopened) == [b"whole", b"next"]
    reopened.close()


def test_rotation_and_segment_cleanup(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1000, max_bytes=1 << 30)
    payloads = [os.urandom(300) for _ in range(20)]
    for p in payloads:  # one by one: each write may rotate
        append_all(spool, [p])
    assert len(list(tmp_path.glob("*.seg"))) > 3
    records, stop = spool.read(spool.checkpoint.flushed, spool.durable, 1 << 30)
    assert records == payloads
    # Reading in small steps returns the same records in order.
    pos, seen = spool.checkpoint.flushed, []
    while pos < spool.durable:
        part, pos = spool.read(pos, spool.durable, 700)
        seen += part
    assert seen == payloads
    spool.release(stop)
    assert len(list(tmp_path.glob("*.seg"))) == 1
    spool.close()


def test_full_spool_refuses(tmp_path):
    spool = Spool(tmp_path, 1 << 20, max_bytes=1000)
    append_all(spool, [b"x" * 900])
    with pytest.raises(SpoolFull):
        append_all(spool, [b"y" * 200])
    spool.release(spool.durable)
    append_all(spool, [b"y" * 200])  # room again once flushed
    spool.close()


def test_checkpoint_with_pending_batch_persists(tmp_path):
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    append_all(spool, [b"a"])
    end = spool.durable
    spool.write_checkpoint(Checkpoint(Pos(1, 0), pending=end))
    spool.close()
    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert reopened.checkpoint.pending == end
    assert reopened.read(Pos(1, 0), end, 1 << 30) == ([b"a"], end)
    reopened.close()


def test_segments_are_written_over_zeros_and_end_at_their_records(tmp_path):
    """A segment being written has a zero-filled, synced tail ahead of its records (see
    Spool._zero_ahead); a finished one is cut to its records; after a crash, the zeros are
    cut off quietly and writing resumes in a new segment."""
    spool = Spool(tmp_path, segment_bytes=4096, max_bytes=1 << 30)
    append_all(spool, [b"a" * 100])
    [first] = tmp_path.glob("*.seg")
    assert first.stat().st_size >= 1024 * 1024  # zeroed ahead
    append_all(spool, [b"b" * 5000])  # past segment_bytes: finished, a new one begun
    assert first.stat().st_size == 2 * 8 + 100 + 5000
    records = [b"c" * 10, b"d" * 10]
    for r in records:
        append_all(spool, [r])
    # A crash: the writer stops and the files are left as they are, zeroed tail included.
    spool._queue.put(None)
    spool._writer.join()
    os.close(spool._fd)
    os.close(spool._zero_fd)
    reopened = Spool(tmp_path, segment_bytes=4096, max_bytes=1 << 30)
    assert read_all(reopened) == [b"a" * 100, b"b" * 5000, *records]
    sizes = sorted(p.stat().st_size for p in tmp_path.glob("*.seg"))
    assert sizes == [0, 2 * 18, 2 * 8 + 100 + 5000]  # cut to their records; a new one
    append_all(reopened, [b"e"])
    assert read_all(reopened)[-1] == b"e"
    reopened.close()


def test_commit_delay_gathers_the_next_commit_only_under_concurrency(tmp_path):
    # A delay long against any machine's fsync, so that "no delay" (well under it) and "one
    # delay" (the five late records in one commit) do not depend on the disk's speed.
    spool = Spool(tmp_path, 1 << 20, 1 << 30, commit_delay=1.0)

    async def go():
        await spool.append(b"alone")  # a lone record: no delay after its commit
        started = asyncio.get_running_loop().time()
        await spool.append(b"next")
        lone_wait = asyncio.get_running_loop().time() - started
        # Company: some commit holds several records, and a delay follows it.
        await asyncio.gather(*(spool.append(b"c%d" % i) for i in range(50)))
        before = spool.fsyncs
        late = []
        for i in range(5):  # arrive one by one during the delay: one commit
            late.append(asyncio.ensure_future(spool.append(b"late%d" % i)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*late)
        return lone_wait, spool.fsyncs - before

    lone_wait, commits = asyncio.run(go())
    assert lone_wait < 0.5  # with the delay: 1 s or more
    assert commits <= 2  # without the delay: 5
    spool.close()


def test_a_segment_that_cannot_be_created_does_not_stop_the_writer(tmp_path, monkeypatch):
    spool = Spool(tmp_path, segment_bytes=100, max_bytes=1 << 30)
    real_open = os.open

    def no_new_files(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(28, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_new_files)
    append_all(spool, [b"x" * 150])  # past segment_bytes: the next segment cannot be made
    append_all(spool, [b"y" * 10])  # still written, to the same segment
    monkeypatch.undo()
    append_all(spool, [b"z" * 10])  # now it rotates
    assert read_all(spool) == [b"x" * 150, b"y" * 10, b"z" * 10]
    assert len(list(tmp_path.glob("*.seg"))) == 2
    spool.close()


def test_a_segment_is_finished_when_old_so_that_flushed_hits_leave_the_disk(tmp_path):
    """A quiet collector fills its 64 MB segment in weeks; a hit flushed to ClickHouse (and
    later erased there, or past its retention) must not stay in the spool that long. The
    writer finishes a segment that is ``segment_seconds`` old, so the flusher's release
    deletes it."""
    spool = Spool(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30, segment_seconds=0.3)
    append_all(spool, [b"a shopper's hit"])
    first = spool.durable.segment
    assert (tmp_path / f"{first:016d}.seg").exists()
    deadline = time.monotonic() + 10
    while spool.durable.segment == first:  # finished by age, no write needed
        assert time.monotonic() < deadline, "the old segment was not finished"
        time.sleep(0.05)
    assert read_all(spool) == [b"a shopper's hit"]
    spool.release(spool.durable)  # what the flusher does once it is in ClickHouse
    assert not (tmp_path / f"{first:016d}.seg").exists()
    empty = spool.durable.segment
    time.sleep(0.6)
    assert spool.durable.segment == empty  # an empty segment is not finished
    spool.close()


# -- damage (a disk fault) -------------------------------------------------------------------
# Payloads as the spool holds them: records of collector/spool/record.py.
RECORDS = [b'{}\n["hit %d"]\n' % i for i in range(10)]


def record_offsets(segment) -> list[int]:
    """Where each record of a segment begins."""
    data, offsets, at = segment.read_bytes(), [], 0
    while at + 8 <= len(data) and int.from_bytes(data[at : at + 4], "little"):
        offsets.append(at)
        at += 8 + int.from_bytes(data[at : at + 4], "little")
    return offsets


def flip(segment, offset: int) -> None:
    with open(segment, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def one_by_one(spool: Spool, payloads: list[bytes]) -> None:
    for p in payloads:  # a record per write, so that a fault hits one record
        append_all(spool, [p])


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_damaged_record_costs_only_itself(tmp_path, where, caplog):
    """A fault inside one record cut every acknowledged record after it off the newest
    segment at the restart, as if torn (an attacker's probe): now only that record is lost,
    as a logged error, and the records after it are read."""
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    one_by_one(spool, RECORDS)
    spool.close()
    [segment] = tmp_path.glob("*.seg")
    fifth = record_offsets(segment)[5]
    flip(segment, fifth + (12 if where == "payload" else 1))
    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert read_all(reopened) == RECORDS[:5] + RECORDS[6:]
    assert "damaged" in caplog.text
    one_by_one(reopened, [b'{}\n["next"]\n'])
    assert read_all(reopened)[-1] == b'{}\n["next"]\n'
    reopened.close()


def test_damage_in_a_finished_segment_costs_only_the_damaged_record(tmp_path):
    spool = Spool(tmp_path, segment_bytes=200, max_bytes=1 << 30)
    one_by_one(spool, RECORDS)
    first = sorted(tmp_path.glob("*.seg"))[0]
    assert len(record_offsets(first)) >= 3
    flip(first, record_offsets(first)[1] + 12)
    got = read_all(spool)
    assert got == RECORDS[:1] + RECORDS[2:]
    spool.close()


def test_damage_in_the_batch_being_flushed_does_not_wedge_the_flusher(tmp_path):
    """Damage between the checkpoint and the durable end of the segment being written (a
    pending batch replayed after a crash, say) raised at every read: the flusher retried
    forever while every later hit was acknowledged and never stored (an attacker's probe)."""
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    one_by_one(spool, RECORDS)
    [segment] = tmp_path.glob("*.seg")
    offsets = record_offsets(segment)
    flip(segment, offsets[3] + 12)
    records, stop = spool.read(spool.checkpoint.flushed, spool.durable, 1 << 30)
    assert records == RECORDS[:3] + RECORDS[4:]
    assert stop == spool.durable
    flip(segment, offsets[-1] + 12)  # the last record: nothing intact follows it
    records, stop = spool.read(spool.checkpoint.flushed, spool.durable, 1 << 30)
    assert records == RECORDS[:3] + RECORDS[4:9]
    assert stop == spool.durable  # read past, not stuck before it
    spool.close()


@pytest.mark.parametrize("text", ["", '{"flushed": [11', "[]", '{"flushed": "x"}',
                                  '{"flushed": "ab", "pending": null}', '{"flushed": [-5, -1]}',
                                  '{"flushed": [1, 0], "pending": [1.5, 2]}'])
def test_a_damaged_checkpoint_is_named(tmp_path, text):
    Spool(tmp_path, 1 << 20, 1 << 30).close()
    (tmp_path / "checkpoint.json").write_text(text)
    with pytest.raises(SpoolError, match=r"checkpoint\.json is damaged"):
        Spool(tmp_path, 1 << 20, 1 << 30)


def test_a_damaged_length_that_leads_to_a_later_record_skips_nothing_intact(tmp_path):
    """A length damaged to lead exactly to a later record's start skipped the intact
    records in between (a re-probe): reading goes on at the first intact record."""
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    one_by_one(spool, RECORDS)
    spool.close()
    [segment] = tmp_path.glob("*.seg")
    offsets = record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[5] : offsets[5] + 4] = (offsets[8] - offsets[5] - 8).to_bytes(4, "little")
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert read_all(reopened) == RECORDS[:5] + RECORDS[6:]
    reopened.close()


def test_a_damaged_last_record_is_an_error_not_a_torn_write(tmp_path, caplog):
    """A whole last record whose checksum fails was acknowledged: its loss is an error,
    where a torn write (never acknowledged) is cut off with a warning."""
    spool = Spool(tmp_path, 1 << 20, 1 << 30)
    one_by_one(spool, RECORDS)
    spool.close()
    [segment] = tmp_path.glob("*.seg")
    flip(segment, record_offsets(segment)[-1] + 12)
    reopened = Spool(tmp_path, 1 << 20, 1 << 30)
    assert read_all(reopened) == RECORDS[:-1]
    assert [r.levelname for r in caplog.records if "damaged" in r.getMessage()] == ["ERROR"]
    reopened.close()
