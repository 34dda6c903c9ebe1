"""Sample shoppers for the demo site, stored once, when ``tagwerk serve`` creates the site.

The browser-safe lists show nothing that one person did alone (``collector/api/
recommend.py``: two persons behind a top product, two sessions behind a co-viewed pair). A
newcomer trying the demo shop in one window would see its "Recommended for you" and
"Customers also viewed" blocks stay empty until a second shopper came by. So a new demo
site gets two days of a few sample shoppers' visits to the demo catalogue, sent as a shop's
server sends hits (the batch API's path: validated, enriched and spooled like any hit):
product views in sessions, carts, some orders.

They are ordinary rows of the ``demo`` site, told apart by their device ids
(``sample-1``...) and ``props.sample``; erasing ``device:sample-1`` removes one like any
person. ``--no-demo-shoppers`` (``TAGWERK_DEMO_SHOPPERS=0``) leaves them out.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from collector.ingest.accept import events_record, server_context, spool
from collector.service import DEMO_SITE, Collector
from collector.storage import StorageError
from collector.web.http import HTTPError

log = logging.getLogger(__name__)

# The demo catalogue (``collector/demo_site/app.js``, where the shop's pages are made):
# product id -> (category, price in euros). A test checks it against app.js.
CATALOGUE = {
    "RW-101": ("coffee", 12.90), "RW-102": ("coffee", 11.50), "RW-103": ("coffee", 13.40),
    "RW-201": ("brewing", 24.00), "RW-202": ("brewing", 59.00), "RW-203": ("brewing", 89.00),
    "RW-301": ("cups", 16.00), "RW-302": ("cups", 22.00),
}
# What a visit looks at: the products of one interest, a few of them per session, so that
# each product has partners viewed with it in several sessions.
INTERESTS = (
    ("RW-101", "RW-103", "RW-201", "RW-202"),  # pour-over at home
    ("RW-102", "RW-203", "RW-302", "RW-101"),  # espresso
    ("RW-301", "RW-302", "RW-102", "RW-103"),  # cups and a bag of beans
    ("RW-201", "RW-202", "RW-203", "RW-301"),  # brewing gear
)
SHOPPERS = 12
AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Safari/605.1.15",
)
CONSENT = ["analytics", "personalization"]
SETTLE_SECONDS = 10.0  # the most a first start waits for them to show in the lists
HAS_PAIRS = "SELECT count() AS pairs FROM tagwerk.coview_pairs WHERE site_id = {site:String}"


def history(now: dt.datetime, seed: int = 7) -> list[dict[str, Any]]:
    """The sample shoppers' hits, as batch API events, over the two days before ``now``:
    each shopper one or two sessions of three or four product views within one interest,
    half of the sessions a product into the cart, a third an order."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for shopper in range(1, SHOPPERS + 1):
        for number in range(rng.choice((1, 1, 2))):
            interest = INTERESTS[(shopper + number) % len(INTERESTS)]
            shared = {"channel": "web", "device_id": f"sample-{shopper}",
                      "session_id": f"sample-{shopper}-{number}",
                      "user_agent": AGENTS[shopper % len(AGENTS)], "consent": CONSENT,
                      "props": {"sample": "true"}}
            events += visit(rng, now - dt.timedelta(hours=rng.uniform(1, 47)), interest, shared)
    return events


def visit(rng: random.Random, began: dt.datetime, interest: tuple[str, ...],
          shared: dict[str, Any]) -> list[dict[str, Any]]:
    """One session's hits, a minute apart, each with the ``shared`` fields."""
    viewed = rng.sample(interest, rng.choice((3, 4)))
    steps: list[tuple[str, list[str], dict[str, Any]]] = [("view_item", [p], {}) for p in viewed]
    if rng.random() < 0.5:
        steps.append(("add_to_cart", viewed[:1], {}))
        if rng.random() < 0.67:
            bought = viewed[:rng.choice((1, 2))]
            steps.append(("purchase", bought, {
                "order_id": f"{shared['session_id']}-order", "currency": "EUR",
                "revenue": round(sum(CATALOGUE[p][1] for p in bought), 2)}))
    return [{"event": name, "ts": (began + dt.timedelta(minutes=minute)).isoformat(),
             "items": [item(p) for p in products], **shared, **more}
            for minute, (name, products, more) in enumerate(steps)]


def item(product_id: str) -> dict[str, Any]:
    category, price = CATALOGUE[product_id]
    return {"product_id": product_id, "category": category, "price": price, "quantity": 1}


async def store(c: Collector) -> int:
    """Spool the sample shoppers' hits into the demo site (once the collector has started),
    and have the co-view pairs counted again once they are in ClickHouse rather than at the
    next minute's refresh: how many hits were stored."""
    site = c.sites.get(DEMO_SITE)
    if site is None:
        return 0
    events = history(dt.datetime.now(dt.UTC))
    received = dt.datetime.now(dt.UTC)
    contexts = [server_context(c, site, event, received) for event in events]
    record, count = events_record(c, site, events, contexts[0], contexts)
    if not record:
        return 0
    try:
        await spool(c, record)
    except HTTPError as exc:  # a demo is no reason not to start
        log.warning("the demo site's sample shoppers were not stored: %s", exc.message)
        return 0
    await run_in_threadpool(_count_pairs, c, time.monotonic() + SETTLE_SECONDS)
    log.info("stored %d hits of %d sample shoppers in the demo site", count, SHOPPERS)
    return count


def _count_pairs(c: Collector, deadline: float) -> None:
    """Once the hits are in ClickHouse, the co-view pairs now (``SYSTEM REFRESH VIEW`` only
    starts a refresh, and is not queued behind a running one: asked again until they show);
    ClickHouse away or slow, the hits wait in the spool and the minute's refresh counts them."""
    while not c.flusher.caught_up:
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    try:
        while time.monotonic() < deadline:
            c.store.execute("SYSTEM REFRESH VIEW tagwerk.coview_pairs_mv")
            for _ in range(10):
                if int(c.store.rows(HAS_PAIRS, {"site": DEMO_SITE})[0]["pairs"]):
                    return
                time.sleep(0.1)
    except StorageError as exc:
        log.info("co-view pairs not counted now: %s", exc)
