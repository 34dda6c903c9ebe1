"""Co-purchase pairs are counted per person (clickhouse/0039): the identity graph's rules at
each purchase's time decide whose it is, as profiles and exclusions resolve persons
(collector/identity/graph.py). Each test uses products of its own, so the site's pairs of
one never count in another's."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from collector.identity.graph import Graph, rows_of
from tests.helpers import make_client, send_batch
from tests.test_aggregates import refresh_minute
from tests.test_identity import ALL, identify, uid

SITE, CAPPED = "cp-shop", "cp-capped"


# (100,000 logins and purchases: tests/conftest.py)
pytestmark = pytest.mark.usefixtures("sites_dropped_after")


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("copurchase"),
                                    demo_site=False)
    with client:
        _, keys = collector.sites.create(SITE)
        _, capped = collector.sites.create(CAPPED, identity_max_persons=2)
        yield client, collector, {SITE: keys, CAPPED: capped}


def send(env, events, site=SITE):
    client, collector, keys = env
    send_batch(client, collector, keys[site]["write"], events)


def purchase(ts, products, device=None, user=None, **identifiers):
    event = {"event": "purchase", "ts": ts, "consent": ALL,
             "items": [{"product_id": p, "price": 1} for p in products]}
    if device:
        event["device_id"] = device
    if user:
        event["user_id"] = user
    if identifiers:
        event["identifiers"] = identifiers
    return event


def pairs(env, products, site=SITE):
    """The pairs among ``products`` with their buyers, each pair in one order."""
    _, collector, _ = env
    refresh_minute(collector.store, (site,), tables=("copurchase_pairs",))
    rows = collector.store.rows(
        "SELECT product_id AS a, other_id AS b, buyers FROM tagwerk.copurchase_pairs "
        "WHERE site_id = {site:String} AND product_id IN {p:Array(String)} AND a < b",
        {"site": site, "p": products})
    return {(row["a"], row["b"]): int(row["buyers"]) for row in rows}


def graph_pairs(env, products, site=SITE):
    """The pairs among ``products`` as the graph's own SQL files the purchases holding them
    (``rows_of``, as profiles find a person's rows): each purchase is the one person's whose
    rows it is among, or nobody's (then it pairs only its own items)."""
    _, collector, _ = env
    store = collector.store
    graph = Graph(store, collector.sites.get(site))
    bought = store.rows(
        "SELECT toString(event_id) AS e, user_id, device_id, identifiers, "
        "items.product_id AS products FROM tagwerk.events WHERE site_id = {s:String} "
        "AND event = 'purchase' AND hasAny(items.product_id, {p:Array(String)})",
        {"s": site, "p": products})
    named = {("user", row["user_id"]) for row in bought if row["user_id"]}
    named |= {("device", row["device_id"]) for row in bought if row["device_id"]}
    named |= {pair for row in bought for pair in row["identifiers"].items()}
    whose: dict[str, set[str]] = {}
    for kind, ident in sorted(named):
        person = graph.resolve(kind, ident, listing=False)
        if person is None:
            continue
        where, params = rows_of(person, claims=True)
        for row in store.rows(
                f"SELECT toString(event_id) AS e FROM tagwerk.events WHERE site_id = "
                f"{{site:String}} AND event = 'purchase' AND {where}", {"site": site, **params}):
            whose.setdefault(row["e"], set()).add(person.person_id)
    baskets: dict[str, set[str]] = {}
    for row in bought:
        owners = whose.get(row["e"], set())
        assert len(owners) <= 1, row
        baskets.setdefault(next(iter(owners), row["e"]), set()).update(row["products"])
    want: dict[tuple[str, str], int] = {}
    for basket in baskets.values():
        for a, b in ((a, b) for a in basket for b in basket if a < b and a in products
                     and b in products):
            want[a, b] = want.get((a, b), 0) + 1
    return want


def both(env, products, site=SITE):
    """The pairs table's pairs among ``products``, once the graph's filing agrees."""
    got = pairs(env, products, site)
    assert got == graph_pairs(env, products, site)
    return got


def admin(env, path, body, site=SITE):
    client, _, keys = env
    response = client.post(f"/api/v1/sites/{site}{path}", content=orjson.dumps(body),
                           headers={"Authorization": f"Bearer {keys[site]['admin']}",
                                    "Content-Type": "application/json"})
    assert response.status_code == 201, response.text


def test_a_purchase_before_logging_in_pairs_with_the_same_persons_later_ones(env):
    """The phone's anonymous purchase is the person's (before its first link, a device is
    its first user's); so is the till's, under the loyalty card the same login named."""
    anna, phone, card = uid("anna"), uid("phone"), uid("L")
    a, b, c = uid("pa"), uid("pb"), uid("pc")
    send(env, [purchase("2026-11-01T08:00:00Z", [a], device=phone),
               identify(anna, phone, "2026-11-01T09:00:00Z", loyalty=card),
               purchase("2026-11-01T10:00:00Z", [b], device=phone),
               purchase("2026-11-01T18:00:00Z", [c], loyalty=card)])
    assert both(env, [a, b, c]) == {tuple(sorted(p)): 1 for p in ((a, b), (a, c), (b, c))}


def test_two_persons_on_a_shared_tablet_are_two_buyers(env):
    """Anna's purchase on the family tablet is hers, Ben's after his login his: no pair of
    theirs, each pairs with their own verified purchase elsewhere."""
    anna, ben, tablet = uid("anna"), uid("ben"), uid("tab")
    x, y, xa, yb = uid("px"), uid("py"), uid("pxa"), uid("pyb")
    send(env, [identify(anna, tablet, "2026-11-02T09:00:00Z"),
               purchase("2026-11-02T09:30:00Z", [x], device=tablet),
               identify(ben, tablet, "2026-11-02T12:00:00Z"),
               purchase("2026-11-02T12:30:00Z", [y], device=tablet),
               purchase("2026-11-02T20:00:00Z", [xa], user=anna),
               purchase("2026-11-02T20:00:00Z", [yb], user=ben)])
    assert both(env, [x, y, xa, yb]) == {tuple(sorted((x, xa))): 1, tuple(sorted((y, yb))): 1}


def test_past_the_cap_a_kiosks_purchases_are_nobodys(env):
    """Over the cap (2 here) the kiosk stops linking at the third user's login: purchases
    after it are each nobody's (only their own items pair), never the last allowed user's
    nor one another's."""
    kiosk, users = uid("kiosk"), [uid(f"u{i}") for i in range(3)]
    bought = [uid(f"k{i}") for i in range(4)]
    send(env, [identify(users[0], kiosk, "2026-11-03T01:00:00Z"),
               identify(users[1], kiosk, "2026-11-03T02:00:00Z"),
               purchase("2026-11-03T02:30:00Z", [bought[0]], device=kiosk),
               purchase("2026-11-03T02:40:00Z", [bought[1]], user=users[1]),
               identify(users[2], kiosk, "2026-11-03T03:00:00Z"),
               purchase("2026-11-03T03:30:00Z", [bought[2], bought[3]], device=kiosk),
               purchase("2026-11-03T03:40:00Z", [bought[0]], device=kiosk)], site=CAPPED)
    assert both(env, bought, site=CAPPED) == {
        tuple(sorted((bought[0], bought[1]))): 1, tuple(sorted((bought[2], bought[3]))): 1}


def test_merges_and_splits_decide_as_for_profiles(env):
    """An admin's merge of two customers makes one buyer; a split gives the shop's demo
    phone its own person, whoever logged in on it."""
    web, shop, demo = uid("web"), uid("shop"), uid("demo")
    p, q, r = uid("pp"), uid("pq"), uid("pr")
    send(env, [identify(web, demo, "2026-11-04T09:00:00Z"),
               purchase("2026-11-04T10:00:00Z", [p], user=web),
               purchase("2026-11-04T11:00:00Z", [q], user=shop),
               purchase("2026-11-04T12:00:00Z", [r], device=demo)])
    assert both(env, [p, q, r]) == {tuple(sorted((p, r))): 1}
    admin(env, "/identity/merge", {"from": f"user:{shop}", "into": f"user:{web}"})
    admin(env, "/identity/split", {"id": f"device:{demo}"})
    assert both(env, [p, q, r]) == {tuple(sorted((p, q))): 1}


def test_an_identifier_shared_by_many_customers_leaves_the_refresh_running(env):
    """A walk-in loyalty card every till customer is identified with (or a shared coupon
    code): 40,000 users on one identifier. Each user's first link was found by searching
    every link of the identifier (40,000 x 40,000), the refresh failed past the engine's
    memory limit, and no site's bought-together pairs moved again (found with a test's
    100,000 users on one e-mail: 76 GiB asked). Its purchases are decided as the graph
    decides them: past the cap (20), nobody's."""
    card, users = uid("walk-in"), [uid("w") for _ in range(40_000)]
    a, b, c = uid("wa"), uid("wb"), uid("wc")
    start = dt.datetime(2026, 11, 5, 8, tzinfo=dt.UTC)
    logins = [identify(user, ts=(start + dt.timedelta(seconds=n)).isoformat(), loyalty=card)
              for n, user in enumerate(users)]
    send(env, [*logins,
               purchase("2026-11-05T07:00:00Z", [a], loyalty=card),  # its first user's
               purchase("2026-11-05T07:30:00Z", [c], user=users[0]),
               purchase("2026-11-06T08:00:00Z", [b], loyalty=card),  # nobody's
               purchase("2026-11-06T09:00:00Z", [a, b], user=users[1])])
    assert both(env, [a, b, c]) == {tuple(sorted((a, c))): 1, tuple(sorted((a, b))): 1}


def test_one_customers_many_logins_on_an_identifier_leave_the_refresh_running(env):
    """Probe 70: one customer logging in 32,000 times with one e-mail, and 32,000 purchases
    that name only that e-mail. Each purchase's row carried every link of the identifier's
    allowed users and searched them (purchases x links): the refresh failed past the
    engine's memory limit for every site. Each purchase now finds its link by a join."""
    email, anna = f"{uid('e')}@example.com", uid("anna")
    a, b, x = uid("la"), uid("lb"), uid("lx")
    start = dt.datetime(2026, 11, 6, 8, tzinfo=dt.UTC)
    events = [identify(anna, ts=(start + dt.timedelta(seconds=n)).isoformat(), email=email)
              for n in range(32_000)]
    events += [purchase((start + dt.timedelta(seconds=n, milliseconds=500)).isoformat(),
                        [x], email=email) for n in range(32_000)]
    send(env, [*events, purchase("2026-11-07T08:00:00Z", [a], email=email),
               purchase("2026-11-07T09:00:00Z", [b], user=anna)])
    assert both(env, [a, b, x]) == {tuple(sorted(p)): 1 for p in ((a, b), (a, x), (b, x))}
