"""Any JSON value in any field is either accepted or refused with EventError, never a crash."""

from __future__ import annotations

import datetime as dt
import random

import orjson
import pytest

from collector.enrich.useragent import parse_agent
from collector.ingest.events import ACCEPTED, Context, EventError, normalize
from collector.spool.record import EVENT_COLUMNS

VALUES = [None, True, False, 0, -1, 2**70, 1.5, float("inf"), "", "x", "x" * 5000, "\x00\ud7ff",
          "2026-11-22T10:00:00Z", "page", "web", "analytics",
          "6f1c3f0e-1111-4a4a-8888-00000000000a",
          "https://shop.example/p?utm_source=a", "http://[::1", [], [1], ["analytics"], [{}],
          [{"product_id": "p", "price": "1.5", "quantity": 2}], [{"price": []}], {}, {"a": "b"},
          {"a": {"b": [1, 2]}}, {"a": None}, {"": 1}]


@pytest.mark.parametrize("seed", range(20))
def test_random_events(seed):
    rng = random.Random(seed)
    fields = sorted(ACCEPTED) + ["nope"]
    for trusted in (False, True):
        ctx = Context("s", dt.datetime.now(dt.UTC), "web", parse_agent("x"), trusted=trusted)
        for _ in range(300):
            raw = {name: rng.choice(VALUES) for name in rng.sample(fields, rng.randint(0, 8))}
            raw.setdefault("event", rng.choice(["e", "page_view", 7, None]))
            try:
                row, _ = normalize(raw, ctx)
            except EventError:
                continue
            assert tuple(row) == EVENT_COLUMNS
            orjson.dumps(list(row.values()))  # always encodable for the spool


@pytest.mark.parametrize(("given", "stored"), [("de", "de"), ("de-AT", "de-AT"),
                                               ("zh-Hant-TW", "zh-Hant-TW"),
                                               ("en_US", "en-US"), ("sr_Latn_RS", "sr-Latn-RS")])
def test_a_language_is_stored_as_a_bcp47_tag(given, stored):
    # A server's POSIX locale (Java's, glibc's) is the tag Accept-Language gives browsers' hits:
    # one form to group by.
    ctx = Context("s", dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    row, _ = normalize({"event": "e", "language": given}, ctx)
    assert row["language"] == stored


@pytest.mark.parametrize("given", ["de_", "_de", "de-", "de--AT", "de AT", "123456789", "d\u00e9",
                                   "de-AT\n", "x" * 36])
def test_a_language_that_is_no_tag_is_refused(given):
    ctx = Context("s", dt.datetime.now(dt.UTC), "server", parse_agent("x"), trusted=True)
    with pytest.raises(EventError, match="'language'"):
        normalize({"event": "e", "language": given}, ctx)
