"""Enrichment on the way in: GeoIP behind trusted proxies, bots flagged or dropped."""

from __future__ import annotations

import uuid

import orjson
import pytest

from tests.helpers import drained, make_client, rows, wait_for
from tests.mmdb_writer import write_city_db

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geo")
    db = tmp / "city.mmdb"
    write_city_db(db, {
        "81.2.69.0/24": {"country": {"iso_code": "GB"}, "subdivisions": [{"iso_code": "ENG"}],
                         "city": {"names": {"en": "London"}}},
        "2001:db8::/32": {"country": {"iso_code": "DE"}, "subdivisions": [{"iso_code": "BE"}],
                          "city": {"names": {"en": "Berlin"}}},
    })
    # Requests are made to come from 10.1.2.3, our "load balancer", where a test needs it.
    client, collector = make_client(store, tmp / "var", geoip_db=db,
                                    trusted_proxies="10.0.0.0/8")
    with client:
        collector.sites.create("geo-test")
        collector.sites.create("geo-nobots", drop_bots=True)
        yield client, collector


def hit(client, site, marker, consent=("analytics",), **headers):
    body = {"site": site, "event": "page_view", "consent": list(consent),
            "props": {"marker": marker}}
    return client.post("/collect", content=orjson.dumps(body),
                       headers={"Content-Type": "text/plain", **headers})


def stored(collector, site, marker):
    wait_for(lambda: drained(collector))
    return rows(collector.store, site, "props['marker'] = {m:String}", m=marker)


def test_location_from_forwarded_for_behind_a_trusted_proxy(env, monkeypatch):
    client, collector = env
    import collector.ingest.accept as ingest

    real = ingest.client_address  # (the address hit_context and the budget use)
    monkeypatch.setattr(ingest, "client_address", lambda c, hit: real(
        c, _with_peer(hit, "10.1.2.3")))
    marker = uuid.uuid4().hex
    assert hit(client, "geo-test", marker, **{"X-Forwarded-For": "1.1.1.1, 81.2.69.160"}
               ).status_code == 202
    [row] = wait_for(lambda: stored(collector, "geo-test", marker))
    assert (row["country"], row["region"], row["city"]) == ("GB", "ENG", "London")
    assert "81.2.69" not in orjson.dumps(row).decode()

    # Without analytics consent: the country only.
    marker = uuid.uuid4().hex
    hit(client, "geo-test", marker, consent=(), **{"X-Forwarded-For": "2001:db8::1"})
    [row] = wait_for(lambda: stored(collector, "geo-test", marker))
    assert (row["country"], row["region"], row["city"]) == ("DE", "", "")


def test_forwarded_for_from_an_untrusted_peer_is_ignored(env):
    client, collector = env
    marker = uuid.uuid4().hex
    hit(client, "geo-test", marker, **{"X-Forwarded-For": "81.2.69.160"})
    [row] = wait_for(lambda: stored(collector, "geo-test", marker))
    assert row["country"] == ""


def test_bots_are_flagged_or_dropped(env):
    client, collector = env
    dropped = collector.metrics.bots_dropped.values.get((), 0)
    marker = uuid.uuid4().hex
    assert hit(client, "geo-test", marker, **{"User-Agent": GOOGLEBOT}).status_code == 202
    [row] = wait_for(lambda: stored(collector, "geo-test", marker))
    assert row["is_bot"] is True and row["device_class"] == "bot"
    marker = uuid.uuid4().hex
    response = hit(client, "geo-nobots", marker, **{"User-Agent": GOOGLEBOT})
    assert response.status_code == 202 and response.json() == {"accepted": 0}
    hit(client, "geo-nobots", marker)  # a person, stored
    [row] = wait_for(lambda: stored(collector, "geo-nobots", marker))
    assert row["is_bot"] is False
    assert collector.metrics.bots_dropped.values[()] == dropped + 1


def _with_peer(hit, peer: str):
    hit.peer = peer
    return hit
