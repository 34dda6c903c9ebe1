"""What trusted reverse proxies tell about the visitor: its IP address (X-Forwarded-For) and
whether it used https (X-Forwarded-Proto); the address's anonymisation.

Every place that asks whether a peer is one of our proxies calls :func:`is_trusted_proxy`,
so an IPv4 peer is judged the same whether the socket reports it as ``10.0.0.1`` or, on a
dual-stack socket, as ``::ffff:10.0.0.1``.

Privacy: the collector never stores an IP address, not even an anonymised one. The
address from :func:`client_ip` is passed through :func:`anonymize_ip` (IPv4 /24,
IPv6 /48) and only that anonymised address is used, for the GeoIP lookup; neither
is written to ClickHouse, the spool or the logs.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = [
    "Network", "anonymize_ip", "client_ip", "is_https", "is_public", "is_trusted_proxy",
    "parse_address",
    "parse_networks",
]

Network = IPv4Network | IPv6Network
_Address = IPv4Address | IPv6Address

_SEPARATORS = re.compile(r"[,\s]+")
_IPV4_HOST_MASK = ~0xFF
_IPV6_HOST_MASK = ~((1 << 80) - 1)


def parse_networks(spec: str | Iterable[str]) -> tuple[Network, ...]:
    """Parse trusted proxies: ``"10.0.0.0/8, 127.0.0.1"`` or a list of such entries.

    A bare address is a single-host network. Raises ValueError naming the bad entry,
    so that a typo stops the collector at start instead of trusting the wrong peers.
    """
    entries = _SEPARATORS.split(spec) if isinstance(spec, str) else spec
    networks = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        try:
            # strict: "10.0.0.1/8" is ambiguous (host or network?); make the operator say.
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid trusted proxy network {entry!r}: {exc}") from None
    return tuple(networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """Return the visitor's address, or "" if there is nothing usable.

    ``peer`` is the address of the direct TCP peer. ``forwarded_for`` is the
    X-Forwarded-For value (several headers joined with ","). It is believed only if
    the peer is a trusted proxy, because anybody can send the header.
    """
    if not peer:
        return ""
    if not forwarded_for or not trusted:
        return _canonical(peer)  # the common case, cached: ipaddress parsing is slow
    address = parse_address(peer)
    if address is None:
        return ""
    if not _in_networks(address, trusted):
        return str(address)
    # Every proxy appends the address it received the request from, so walk from
    # the right: the first hop that is not one of our proxies is the visitor, and
    # anything to its left was supplied by the visitor and may be forged.
    candidate = address
    for entry in reversed(forwarded_for.split(",")):
        hop = parse_address(entry)
        if hop is None:
            # Garbage where an address should be: the chain cannot be followed.
            return str(address)
        candidate = hop
        if not _in_networks(hop, trusted):
            break
    # If every hop is trusted, the leftmost is the best guess.
    return str(candidate)


@functools.lru_cache(maxsize=4096)
def is_trusted_proxy(peer: str, trusted: tuple[Network, ...]) -> bool:
    """Whether the direct peer ``peer`` is one of the ``trusted`` proxies, whose forwarded
    headers are believed. An IPv4-mapped peer (``::ffff:10.0.0.1``) is its IPv4 address;
    anything that is not an address is not trusted. Cached: the same few proxies ask."""
    if not peer or not trusted:
        return False
    address = parse_address(peer)
    return address is not None and _in_networks(address, trusted)


def is_https(scheme: str | None, forwarded_proto: str | None, peer: str,
             trusted: tuple[Network, ...]) -> bool:
    """Whether the browser's request came over https: the connection's ``scheme``, or
    ``X-Forwarded-Proto`` (its first entry, from the proxy facing the browser) when the peer
    is a trusted proxy. A connection over TLS stays https whatever a header says, so a
    cookie is ``Secure`` when in doubt."""
    if scheme == "https":
        return True
    if not forwarded_proto or not is_trusted_proxy(peer, trusted):
        return False
    return forwarded_proto.split(",")[0].strip().lower() == "https"


# Where a proxy or a system of the shop's own sends from, never a client on the internet:
# loopback, private (RFC 1918, unique local), a carrier's NAT inside, link-local, "this
# network". (Not ipaddress's is_global: it also leaves out Teredo and documentation
# ranges, which clients can send from.)
NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "169.254.0.0/16", "0.0.0.0/8", "::1/128", "::/128", "fc00::/7", "fe80::/10"))


@functools.lru_cache(maxsize=65536)
def is_public(address: str) -> bool:
    """Whether an address can be a client's on the internet (``NOT_PUBLIC``). The
    per-client limits hold public addresses only: another is a proxy or a system of the
    shop's own (one not declared trusted would otherwise hold every visitor to one
    client's share)."""
    parsed = parse_address(address)
    return parsed is not None and not _in_networks(parsed, NOT_PUBLIC)


@functools.lru_cache(maxsize=65536)
def _canonical(value: str) -> str:
    address = parse_address(value)
    return "" if address is None else str(address)


@functools.lru_cache(maxsize=65536)
def anonymize_ip(ip: str) -> str:
    """Zero the host part: IPv4 keeps its /24, IPv6 its /48. Returns "" if invalid."""
    address = parse_address(ip)
    if address is None:
        return ""
    if isinstance(address, IPv4Address):
        return str(IPv4Address(int(address) & _IPV4_HOST_MASK))
    return str(IPv6Address(int(address) & _IPV6_HOST_MASK))


def _in_networks(address: _Address, trusted: Sequence[Network]) -> bool:
    # Membership across IP versions is simply False, no need to filter.
    return any(address in network for network in trusted)


def parse_address(value: str) -> _Address | None:
    """An address as peers and proxies write it (with a port, in brackets, with a zone), or
    None. An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is returned as its IPv4 address."""
    value = value.strip()
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or (rest and not (rest[:1] == ":" and _is_port(rest[1:]))):
            return None
        value = host
    elif value.count(":") == 1:
        # One colon is IPv4 with a port; an IPv6 address has at least two.
        value, _, port = value.partition(":")
        if not _is_port(port):
            return None
    # Zone IDs ("fe80::1%eth0") are local to the proxy and mean nothing here.
    value = value.partition("%")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        # Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
        return address.ipv4_mapped
    return address


def _is_port(value: str) -> bool:
    return value.isascii() and value.isdigit() and int(value) <= 65535
