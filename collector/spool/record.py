"""The spool's record format, and the tables a record may be for.

Each spool record is one accepted request: a first line of metadata, then one
JSONCompactEachRow line per row. The metadata names the target table:

- ``{}``, or ``{"site", "ids", "lo", "hi"}`` (the sender-given event ids with their site and
  time range): rows of ``tagwerk.events`` (``EVENT_COLUMNS`` in order). Records written
  before other tables existed read the same way.
- ``"g": {event_id: key}`` beside those (and ``"db": 1`` for a site that drops bots): rows
  stored with a first guess of their User-Agent's class; the flusher writes the accurate
  answer in before it inserts, when this process still knows the key and its per-batch
  budget allows (``collector.enrich.useragent``), and drops those that turn out bots where ``db``.
- ``{"t": TABLE}``: rows of another table of ``TABLES`` (``consent_log``:
  ``consent.log.COLUMNS``), which has no sender-given ids to check.

Ingestion writes records with :func:`encode_record`; the flusher reads them back.
"""

from __future__ import annotations

from typing import Any

import orjson

from consent.log import COLUMNS as CONSENT_COLUMNS

NO_META = b"{}"
TABLE_META = b'{"t":'
EVENTS = "events"
CONSENT_LOG = "consent_log"
# A row of tagwerk.events as ingestion makes it (``collector.ingest.events.normalize``), in
# this order: the spool keeps rows as JSON arrays (JSONCompactEachRow), which ClickHouse
# parses in 60% of the time it takes for JSON objects.
EVENT_COLUMNS = (
    "event_id", "site_id", "event", "type", "ts", "received_at", "channel", "device_id",
    "session_id", "user_id", "consent", "url", "path", "title", "referrer", "referrer_host",
    "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content",
    "device_class", "browser", "os", "is_bot", "country", "region", "city", "language",
    "screen", "order_id", "revenue", "currency", "coupon", "items", "props", "retention_days",
    # Added later: last, so that spool records written before them still load (the flusher
    # lets a row end early; the columns then take their defaults).
    "identifiers", "consent_id", "user_verified", "client_hash",
)
# The tables a record may be for, with their columns in the order of a record's rows.
TABLES = {EVENTS: EVENT_COLUMNS, CONSENT_LOG: CONSENT_COLUMNS}
INSERTS = {name: f"tagwerk.{name} ({', '.join(columns)})" for name, columns in TABLES.items()}


def encode_record(
    lines: list[bytes], site_id: str, given: list[tuple[str, str]], table: str = EVENTS,
    guessed: dict[str, str] | None = None, drop_bots: bool = False,
) -> bytes:
    """One spool record: metadata, then the rows. ``given``: (event_id, ts) the sender chose
    (events only). ``table``: where the rows go, one of ``TABLES``. ``guessed``: event_id ->
    pending key of the rows whose agent is a first guess (events only)."""
    if table != EVENTS:
        if table not in TABLES or given:
            raise ValueError(f"cannot spool rows for table {table!r} with sender ids {given!r}")
        meta = orjson.dumps({"t": table})
    elif given or guessed:
        fields: dict[str, Any] = {}
        if given:
            times = [ts for _, ts in given]
            fields = {"site": site_id, "ids": [i for i, _ in given], "lo": min(times),
                      "hi": max(times)}
        if guessed:
            fields["g"] = guessed
            if drop_bots:
                fields["db"] = 1
        meta = orjson.dumps(fields)
    else:
        meta = NO_META
    return meta + b"\n" + b"\n".join(lines) + b"\n"


def table_of(record: bytes) -> str:
    """The table a record's rows are for (``EVENTS`` unless its metadata names another)."""
    if record.startswith(TABLE_META):
        return orjson.loads(record[: record.index(b"\n")])["t"]
    return EVENTS
