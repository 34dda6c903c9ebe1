"""A minimal MaxMind DB (format 2.0) writer, so tests can build their own GeoIP files.

Only what tests need: an IPv6 search tree (IPv4 networks live under ::/96, where
MaxMind's own databases keep the IPv4 space), 24/28/32-bit records and the data
types maps, arrays, UTF-8 strings, booleans, doubles, bytes and unsigned integers.
No pointers: identical records are stored once and shared by the tree instead.

Layout: search tree | 16 zero bytes | data section | b"\\xab\\xcd\\xefMaxMind.com" | metadata
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from typing import Any

__all__ = ["write_city_db", "write_db"]

_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_DATA_SEPARATOR = b"\x00" * 16

# Data type numbers from the spec; types above 7 are "extended".
_UTF8, _DOUBLE, _BYTES, _UINT16, _UINT32, _MAP = 2, 3, 4, 5, 6, 7
_INT32, _UINT64, _UINT128, _ARRAY, _BOOLEAN = 8, 9, 10, 11, 14


class UInt16(int):
    """Force a metadata field's type: libmaxminddb checks them exactly."""


class UInt32(int):
    pass


class UInt64(int):
    pass


def write_city_db(
    path: str | os.PathLike[str],
    networks: dict[str, dict[str, Any]],
    *,
    record_size: int = 28,
) -> None:
    """Write a "GeoLite2-City" database mapping each network to its record."""
    write_db(
        path,
        networks,
        database_type="GeoLite2-City",
        description="tagwerk test GeoIP database",
        record_size=record_size,
    )


def write_db(
    path: str | os.PathLike[str],
    networks: dict[str, dict[str, Any]],
    *,
    database_type: str,
    description: str,
    record_size: int = 28,
) -> None:
    if record_size not in (24, 28, 32):
        raise ValueError(f"record_size must be 24, 28 or 32, not {record_size}")

    # Data section: one encoded record per distinct value, in insertion order.
    data = bytearray()
    offsets: dict[bytes, int] = {}
    leaves: list[tuple[int, int, int]] = []  # (prefix as int, prefix length, data offset)
    for spec, record in networks.items():
        encoded = _encode(record)
        if encoded not in offsets:
            offsets[encoded] = len(data)
            data += encoded
        network = ipaddress.ip_network(spec)
        value, length = int(network.network_address), network.prefixlen
        if network.version == 4:
            length += 96  # ::a.b.c.d/(96 + n): zeros on top of the IPv4 bits
        if length == 0:
            raise ValueError("::/0 cannot be stored: the root of the tree is a node")
        leaves.append((value, length, offsets[encoded]))

    tree = _Tree()
    # Shorter prefixes first, so that a more specific network splits its parent's
    # leaf instead of being overwritten by it.
    for value, length, offset in sorted(leaves, key=lambda leaf: leaf[1]):
        tree.insert(value, length, offset)

    node_count = len(tree.nodes)
    tree_bytes = tree.serialize(record_size)
    metadata = {
        "binary_format_major_version": UInt16(2),
        "binary_format_minor_version": UInt16(0),
        "build_epoch": UInt64(int(time.time())),
        "database_type": database_type,
        "description": {"en": description},
        "ip_version": UInt16(6),
        "languages": ["en"],
        "node_count": UInt32(node_count),
        "record_size": UInt16(record_size),
    }
    with open(path, "wb") as file:
        file.write(tree_bytes)
        file.write(_DATA_SEPARATOR)
        file.write(data)
        file.write(_METADATA_MARKER)
        file.write(_encode(metadata))


# A record is a node index, a _Leaf (offset into the data section) or None (no data).
class _Leaf(int):
    pass


class _Tree:
    def __init__(self) -> None:
        self.nodes: list[list[int | _Leaf | None]] = [[None, None]]  # node 0 is the root

    def insert(self, value: int, length: int, offset: int) -> None:
        node = 0
        for depth in range(length - 1):
            bit = (value >> (127 - depth)) & 1
            child = self.nodes[node][bit]
            if child is None or isinstance(child, _Leaf):
                # A leaf on the way down covers a bigger network: split it so that
                # both halves keep its data and the new network overrides one side.
                self.nodes.append([child, child])
                child = len(self.nodes) - 1
                self.nodes[node][bit] = child
            node = child
        self.nodes[node][(value >> (128 - length)) & 1] = _Leaf(offset)

    def serialize(self, record_size: int) -> bytes:
        node_count = len(self.nodes)
        limit = 1 << record_size
        out = bytearray()
        for left, right in self.nodes:
            records = [self._record(left, node_count), self._record(right, node_count)]
            if max(records) >= limit:
                raise ValueError(f"record value does not fit in {record_size} bits")
            left_value, right_value = records
            if record_size == 24:
                out += left_value.to_bytes(3, "big") + right_value.to_bytes(3, "big")
            elif record_size == 28:
                # The middle byte: high nibble tops the left record, low the right.
                middle = ((left_value >> 24) << 4) | (right_value >> 24)
                out += (left_value & 0xFFFFFF).to_bytes(3, "big")
                out.append(middle)
                out += (right_value & 0xFFFFFF).to_bytes(3, "big")
            else:
                out += struct.pack(">II", left_value, right_value)
        return bytes(out)

    @staticmethod
    def _record(child: int | _Leaf | None, node_count: int) -> int:
        if child is None:
            return node_count  # "no data"
        if isinstance(child, _Leaf):
            # Data pointers count from the start of the 16-byte separator.
            return node_count + len(_DATA_SEPARATOR) + child
        return child


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        payload = value.encode()
        return _control(_UTF8, len(payload)) + payload
    if isinstance(value, bool):  # before int: bool is an int
        return _control(_BOOLEAN, int(value))
    if isinstance(value, UInt16):
        return _uint(_UINT16, value, 2)
    if isinstance(value, UInt32):
        return _uint(_UINT32, value, 4)
    if isinstance(value, UInt64):
        return _uint(_UINT64, value, 8)
    if isinstance(value, int):
        if value < 0:
            if value < -(2**31):
                raise ValueError(f"integer out of range: {value}")
            return _control(_INT32, 4) + struct.pack(">i", value)
        for type_, size in ((_UINT16, 2), (_UINT32, 4), (_UINT64, 8), (_UINT128, 16)):
            if value < 1 << (8 * size):
                return _uint(type_, value, size)
        raise ValueError(f"integer out of range: {value}")
    if isinstance(value, float):
        return _control(_DOUBLE, 8) + struct.pack(">d", value)
    if isinstance(value, bytes):
        return _control(_BYTES, len(value)) + value
    if isinstance(value, dict):
        out = bytearray(_control(_MAP, len(value)))
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map keys must be strings, not {key!r}")
            out += _encode(key) + _encode(item)
        return bytes(out)
    if isinstance(value, list | tuple):
        out = bytearray(_control(_ARRAY, len(value)))
        for item in value:
            out += _encode(item)
        return bytes(out)
    raise TypeError(f"cannot encode {type(value).__name__} in a MaxMind DB")


def _uint(type_: int, value: int, max_size: int) -> bytes:
    if not 0 <= value < 1 << (8 * max_size):
        raise ValueError(f"integer out of range: {value}")
    # Unsigned integers are stored big-endian without leading zero bytes.
    payload = value.to_bytes(max_size, "big").lstrip(b"\x00")
    return _control(type_, len(payload)) + payload


def _control(type_: int, size: int) -> bytes:
    # Control byte: 3 type bits, 5 size bits. Extended types put 0 in the type bits
    # and (type - 7) in the next byte; size extension bytes come after that.
    if size < 29:
        size_bits, extra = size, b""
    elif size < 285:
        size_bits, extra = 29, bytes([size - 29])
    elif size < 65821:
        size_bits, extra = 30, (size - 285).to_bytes(2, "big")
    elif size < 16843037:
        size_bits, extra = 31, (size - 65821).to_bytes(3, "big")
    else:
        raise ValueError(f"value too large: {size}")
    if type_ <= 7:
        return bytes([(type_ << 5) | size_bits]) + extra
    return bytes([size_bits, type_ - 7]) + extra
