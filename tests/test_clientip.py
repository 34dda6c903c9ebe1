"""What the collector believes of a request that came through reverse proxies: every place
that asks "is this peer one of our proxies?" or "did the browser use https?" must answer
alike, or a forged header gets through wherever the weakest copy stands."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from collector.ingest import webconsent
from collector.web.clientip import (
    client_ip,
    is_https,
    is_trusted_proxy,
    parse_address,
    parse_networks,
)
from collector.web.http import Hit
from tests.helpers import make_client

NETWORKS = parse_networks("10.0.0.0/8")

# (peer as the server reports it, whether it is one of NETWORKS' proxies)
PEERS = [
    ("10.1.2.3", True),
    ("::ffff:10.1.2.3", True),  # an IPv4 proxy seen through a dual-stack socket
    ("::FFFF:a01:203", True),  # the same address, written in hex
    ("192.0.2.1", False),
    ("::ffff:192.0.2.1", False),  # an IPv4 visitor seen through a dual-stack socket
    ("2001:db8::1", False),
    ("::10.1.2.3", False),  # IPv4-compatible (deprecated), not mapped: another address
    ("not-an-ip", False),
    ("", False),
]


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("clientip"),
                                    trusted_proxies="10.0.0.0/8")
    with client:
        yield client, collector


@pytest.mark.parametrize(("peer", "trusted"), PEERS)
def test_the_trusted_proxy_check(peer, trusted):
    assert is_trusted_proxy(peer, NETWORKS) is trusted
    assert is_trusted_proxy(peer, ()) is False


@pytest.mark.parametrize(("peer", "trusted"), PEERS)
def test_a_forwarded_address_is_believed_only_from_a_proxy(peer, trusted):
    """A visitor that writes X-Forwarded-For itself, from an address in IPv4-mapped form,
    is still the visitor (its address in plain IPv4, as every other place sees it)."""
    got = client_ip(peer, "203.0.113.7", NETWORKS)
    if trusted:
        assert got == "203.0.113.7"
    else:
        address = parse_address(peer)
        assert got == ("" if address is None else str(address))
        assert got != "203.0.113.7"


@pytest.mark.parametrize(("peer", "trusted"), PEERS)
def test_the_device_cookie_and_the_preview_cookie_agree_on_https(env, peer, trusted):
    """X-Forwarded-Proto from a proxy makes both the device cookie (webconsent.py) and the
    preview cookie (tagjs.py) Secure; from anybody else it changes neither."""
    client, collector = env
    headers = [(b"x-forwarded-proto", b"https")]
    hit = Hit({"type": "http", "method": "POST", "scheme": "http", "headers": headers,
               "client": (peer, 1)}, None)
    assert webconsent.is_https(hit, collector.settings.networks) is trusted
    if not peer:
        return  # the test client cannot be a peer without an address
    proxied = TestClient(client.app, client=(peer, 5000))
    ended = proxied.get("/t/preview?end=1", headers={"X-Forwarded-Proto": "https",
                                                     "X-Forwarded-For": "10.9.9.9"})
    assert ended.status_code == 200
    assert ("; Secure" in ended.headers["set-cookie"]) is trusted


@pytest.mark.parametrize(("scheme", "proto", "host", "secure"), [
    ("https", None, "testserver", True),
    ("https", "http", "testserver", True),  # a connection over TLS stays Secure
    ("https", None, "bad host!", True),  # a strange Host does not make it less https
    ("http", "https, http", "testserver", True),  # the proxy facing the browser comes first
    ("http", " HTTPS ", "testserver", True),
    ("http", "http", "testserver", False),
    ("http", "", "testserver", False),
    ("http", None, "testserver", False),
])
def test_one_rule_for_https(env, scheme, proto, host, secure):
    client, collector = env
    assert is_https(scheme, proto, "10.1.2.3", NETWORKS) is secure
    proxied = TestClient(client.app, client=("10.1.2.3", 5000))
    headers = {"Host": host, **({"X-Forwarded-Proto": proto} if proto is not None else {})}
    ended = proxied.get(f"{scheme}://testserver/t/preview?end=1", headers=headers)
    assert ended.status_code == 200
    assert ("; Secure" in ended.headers["set-cookie"]) is secure


def test_loopback_is_judged_the_same_way():
    """The SQL interface's loopback-only check reads the peer as the proxy check does."""
    assert parse_address("::ffff:127.0.0.1").is_loopback
    assert not parse_address("::ffff:192.0.2.1").is_loopback
    assert parse_address("nonsense") is None
