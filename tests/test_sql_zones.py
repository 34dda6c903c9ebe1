"""collector/sqlhttp/zones.py: the functions whose arguments the engine reads as a time zone
or a type name, as the installed engine says.

The table is checked against the engine by the same probe that wrote it (the whole probe
takes minutes), for every function it lists and every function of the kinds that take
zones or types (dates and times, time windows, type conversion, JSON, UUIDs): a position a
newer engine starts to read fails here until the table is printed again (``zones.main``).
A function a newer engine adds elsewhere is refused until reviewed
(``reviewed_functions.txt``), and its review runs the whole probe.
"""

from __future__ import annotations

import tempfile

import pytest

from collector.sqlhttp import zones
from collector.sqlhttp.syntax import parse
from tests import background

KINDS = ("SELECT name FROM system.functions WHERE alias_to = '' AND (categories ILIKE '%date%' "
         "OR categories ILIKE '%time window%' OR categories ILIKE '%type conversion%' "
         "OR categories ILIKE '%json%' OR categories ILIKE '%uuid%' "
         "OR lower(name) IN {names:Array(String)})")


def probe_the_engine() -> dict:
    """The probe of the functions of the kinds that take zones and types, and the table's
    own, on an engine of its own (a scratch path): ``{"kinds": [...], "found": {name: LAST
    or [[arity, positions], ...]}}``. About a minute of a core: run in the background from
    the session's start (tests/background.py)."""
    from collector.storage.embedded import EmbeddedStore

    with tempfile.TemporaryDirectory(prefix="zones-") as scratch:
        store = EmbeddedStore(scratch)
        try:
            kinds = [row["name"] for row in store.rows(KINDS, {"names": sorted(zones.TABLE)})]
            found = zones.probe(zones.query_on(store), kinds)
        finally:
            store.close()
    return {"kinds": kinds, "found": {
        name: entry if isinstance(entry, int) else [[n, list(ps)] for n, ps in entry.items()]
        for name, entry in found.items()}}


def test_the_table_is_the_engines() -> None:
    probed = background.result("zones probe")
    kinds = probed["kinds"]
    assert len(kinds) > 300, "the engine's categories changed: widen the selection"
    found = {name: entry if isinstance(entry, int) else {n: tuple(ps) for n, ps in entry}
             for name, entry in probed["found"].items()}
    listed = {name: entry for name, entry in zones.TABLE.items()
              if name in found or name in {k.lower() for k in kinds}}
    assert found == listed, (
        "the engine reads zones or types at other positions than collector/sqlhttp/zones.py "
        "lists: print the table again (collector/sqlhttp/zones.py says how)")


@pytest.mark.parametrize(("name", "arity", "expected"), [
    ("toTimeZone", 2, (1,)),      # an alias, as written
    ("TOTIMEZONE", 2, (1,)),
    ("now", 1, (0,)),
    ("dateDiff", 4, (3,)),
    ("date_diff", 4, (3,)),
    ("dateDiff", 3, ()),          # unit, start, end: no zone
    ("JSONExtract", 6, (5,)),     # the type is the last argument, however many paths
    ("toStartOfInterval", 3, (2,)),
    ("toStartOfInterval", 4, (3,)),  # the origin, third, is a date
    ("plus", 2, ()),
])
def test_positions(name: str, arity: int, expected: tuple[int, ...]) -> None:
    assert tuple(zones.positions(name, arity)) == expected


def test_a_call_of_a_number_of_arguments_never_probed_gets_every_known_position() -> None:
    assert tuple(zones.positions("toStartOfInterval", 7)) == (2, 3)


def test_a_bound_parameter_is_a_literal_in_the_tree(store) -> None:
    # What lets `toTimeZone(ts, {tz:String})` through: the engine's tree holds its value.
    tree = parse(store.connection(), "SELECT toTimeZone(now(), {tz:String})",
                 {"tz": "Europe/Berlin"}).tree
    call = next(node for node, _ in tree.walk() if node.ident == "toTimeZone")
    assert [arg.kind for arg in call.children[0].children] == ["Function", "Literal"]
