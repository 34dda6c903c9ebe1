"""Any JSON value in any field is either accepted or refused with EventError, never a crash."""

from __future__ import annotations

import datetime as dt
import random

import orjson
import pytest

from collector.ingest.events import ACCEPTED, COLUMNS, Context, EventError, normalize
from collector.ingest.useragent import parse_agent

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
            assert tuple(row) == COLUMNS
            orjson.dumps(list(row.values()))  # always encodable for the spool
