"""The export cursor: where a reader of a site's rows stands in the order rows were stored.

Why positions are block numbers
-------------------------------
Every insert into a MergeTree table becomes one part per partition, and each part gets the
next number of a table-wide counter, its *block number*. With ``enable_block_number_column``
and ``enable_block_offset_column`` (migration 0009) every row keeps ``(_block_number,
_block_offset)``, its block and its place in it, through merges and mutations. A row's
position is that pair; a cursor is a position: "every row of this site up to here was
delivered". An answer holds the rows after ``since`` up to a bound that becomes the next
cursor.

Why no row is skipped or repeated
---------------------------------
- Late commits. The known trap (PostHog's batch export lost rows this way): block numbers
  are allocated before the commit, so a reader that sees block 7 and moves past it misses
  block 6 when 6 commits later. In a plain (non-replicated) MergeTree that cannot happen:
  the number is allocated, the deduplication log checked and the part committed under one
  lock on the table's parts (``MergeTreeSink::commitPart``: ``lockParts()``,
  ``fillNewPartName``, ``renameTempPartAndAdd``, ``transaction.commit``). Once block N is
  visible every lower number is either visible or was never committed (a duplicate, a
  failed insert): the gap stays a gap. So the bound of an answer is the highest block
  number of the table's active parts (``system.parts``), read before the rows are read,
  whoever inserted them: several collectors, the batch API, a spool replayed after a crash.
  A Replicated or Shared MergeTree allocates numbers in Keeper before the commit and per
  partition, so there the argument fails: the endpoints refuse such a table (501) rather
  than export it wrongly.
- Old event times. Positions follow insertion, not ``ts``: a replayed spool or a batch with
  last year's timestamps lands in an old partition under a new, higher block number.
- Replays. The flusher repeats a batch with its ``insert_deduplication_token``; a block that
  ClickHouse drops as a duplicate never becomes a part, so it has no position: the rows are
  delivered once, under the first insert's position.
- Deletes and TTL. A row deleted later (lightweight DELETE, TTL) is simply not read again;
  positions of other rows do not move. ReplacingMergeTree's collapsing of repeated
  event_ids removes rows the same way.
- Many answers. An answer holds exactly the rows of its range, in no promised order
  (the engine reads parts in parallel; the live stream sorts by position); an answer cut
  by ``limit`` ends at a row's exact position, so the next one starts right after it.

What is not a cursor's job
--------------------------
The cursor is opaque to clients but not secret: base64url of ``version, table tag, site
tag, block, offset, check``. The read key decides which rows a caller sees (every query is
filtered by the site of the key); a cursor only says where to start. So a forged position
can only reread or skip the caller's own rows. The site tag turns another site's cursor
into a clear 400, the table tag one from another copy of the table (a fresh data
directory), and the check catches truncation and typing errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from typing import NamedTuple

from collector.api.access import ApiError

VERSION = 1
LAST = (1 << 64) - 1  # an offset past every row of a block
_BODY = struct.Struct(">B4s6sQQ")
_CHECK = 4
_TEXT = re.compile(r"[A-Za-z0-9_-]{42}")  # fullmatch: 31 bytes, base64url without padding


class Position(NamedTuple):
    """(block, offset): rows compare as these tuples do."""

    block: int
    offset: int


def tag(text: str, size: int) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:size]


def encode(table: bytes, site_id: str, position: Position) -> str:
    body = _BODY.pack(VERSION, table, tag(site_id, 6), position.block, position.offset)
    check = hashlib.sha256(body).digest()[:_CHECK]
    return base64.urlsafe_b64encode(body + check).rstrip(b"=").decode()


def decode(text: str, table: bytes, site_id: str, field: str = "since") -> Position:
    """The position in ``text``, or a 400 naming ``field``."""
    if not _TEXT.fullmatch(text):
        raise ApiError(400, f"{field!r} is not a cursor given by this endpoint (take it from "
                       "the Tagwerk-Cursor header or an event's id)", field)
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field!r} is not a cursor given by this endpoint", field) from None
    body, check = raw[:-_CHECK], raw[-_CHECK:]
    if hashlib.sha256(body).digest()[:_CHECK] != check:
        raise ApiError(400, f"{field!r} is damaged (its check does not match)", field)
    version, table_tag, site_tag, block, offset = _BODY.unpack(body)
    if version != VERSION:
        raise ApiError(400, f"{field!r} has an unknown version {version}", field)
    if site_tag != tag(site_id, 6):
        raise ApiError(400, f"{field!r} is a cursor of another site", field)
    if table_tag != table:
        raise ApiError(400, f"{field!r} is from another copy of the events table; start again "
                       "without it", field)
    return Position(block, offset)
