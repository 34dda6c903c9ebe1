"""Strings the engine reads as SQL when the query runs, checked as the engine reads them.

The engine's tree shows a string as one literal, but the engine may parse it again: a table
function's column list (``values('a DateTime(...)', ...)``), a type name (``CAST(x,
'DateTime(...)')``), a quoted name that is a type (a ``Dynamic`` subcolumn,
``d.`DateTime(...)```), the value of an ``Identifier`` parameter. Each such string is read
back from the engine (its value, escapes undone), parsed as the engine would parse it, and
every string literal inside is read back and checked (``values.check_value``: a zone named
by a file; ``x'...'`` and ``b'...'`` strings are only seen so). Each of these is an engine
call: a statement gets at most ``BUDGET`` of them (a probe's request made 10,000).
"""

from __future__ import annotations

import threading

from collector.sqlhttp import policy
from collector.sqlhttp.config import Connection
from collector.sqlhttp.errors import SqlError, denied
from collector.sqlhttp.statements import tokens
from collector.sqlhttp.syntax import Node, parse
from collector.sqlhttp.values import check_value, unescaped

BUDGET = 256  # engine calls a statement's strings may cost (a new string: one or two)
MAX_DOTS = 16  # in a name that may be a subcolumn's type (d.a.b.DateTime(...))
_BLANK = " \t\n\r\f\v"


def check(conn: Connection, tree: Node, sql: str, binds: dict[str, str], readonly: bool
          ) -> None:
    """Raise SqlError unless every string of the statement ``tree`` (canonical text ``sql``,
    parameters ``binds``) that the engine reads as SQL or as a type is harmless. ``conn``:
    the thread's own connection, none of the client's settings (a lowered max_query_size)
    may fail a check's parse."""
    checks = _Checks(conn)
    for literal in policy.input_format_literals(tree):
        policy.check_input_format(checks.value(literal))
    for literal in policy.structure_literals(tree):
        text = checks.value(literal)
        policy.check_structure_text(text)
        columns = checks.column_list(text)
        if columns is not None:
            policy.check_structure(columns, readonly)
            checks.literals(columns)
    # A quoted name may be a type (a Dynamic or JSON subcolumn, d.`DateTime(...)`), and so
    # may an Identifier parameter's value, which the tree shows substituted.
    names = {unescaped(token.text[1:-1].decode("utf-8", "replace"))
             for token in tokens(sql.encode()) if token.kind == "quoted" and b"(" in token.text}
    names.update(value for value in binds.values() if "(" in value)
    for name in names:
        # d.DateTime(...): the type is what follows one of the dots.
        starts = [0, *(i + 1 for i, c in enumerate(name[: name.rfind("(")]) if c == ".")]
        if len(starts) > MAX_DOTS:  # each a parse of the rest (a twelfth probe: 13 s)
            raise denied(f"a name with more than {MAX_DOTS} dots before its last '(' is not "
                         "allowed over HTTP")
        for start in starts:
            checks.type_name(name[start:])
    for literal in policy.zone_literals(tree):
        zone = checks.value(literal)
        check_value(zone)
        if "(" in zone:  # a type names a zone in parentheses only
            checks.type_name(zone)


class _Checks:
    def __init__(self, conn: Connection) -> None:
        self.conn, self.left = conn, BUDGET

    def _spend(self, cost: int = 1) -> None:
        self.left -= cost
        if self.left < 0:
            raise denied(f"the statement has more strings that the engine reads as SQL or "
                         f"as types than can be checked ({BUDGET} engine calls)")

    def value(self, literal: str) -> str:
        """A literal's value, as the engine reads it (the tree prints it quoted and
        escaped). Short ones are kept: the same zones and types come again and again."""
        value = _values.get(literal)
        if value is None:
            self._spend()
            value = self.conn.query(f"SELECT {literal}", "TSVRaw").bytes().decode()
            value = value.removesuffix("\n")
            if len(literal) <= 256:
                with _values_lock:
                    _values[literal] = value
                    if len(_values) > 4096:
                        _values.pop(next(iter(_values)))
        return value

    def column_list(self, text: str) -> Node | None:
        """The engine's parse of ``text`` as a table's column list, or None if it is none.
        The engine's own parsers of types and column lists take a trailing ``;``, which the
        wrapper would not: a string ending in one passed unchecked (``values('b String
        ALIAS file(...);', 1)`` read any file for default; a twelfth probe). So it is parsed
        without them, and a string with a ``;`` that does not parse is refused. A long one
        costs more of the budget (each 4 KiB one call: a 60 KB name took 50 ms a parse)."""
        self._spend(1 + len(text) // 4096)
        bare = text.rstrip(_BLANK)
        while bare.endswith(";"):
            bare = bare[:-1].rstrip(_BLANK)
        try:
            return parse(self.conn, policy.STRUCTURE.format(bare), {}).tree
        except SqlError as exc:
            if exc.code != 62:  # a syntax error: no column list
                raise
            if ";" in bare:
                raise denied("a string the engine may read as a type or a column list may "
                             "not hold ';'") from None
            return None

    def type_name(self, text: str) -> None:
        """A string the engine may parse as a column's type, parsed so and its literals
        checked (nothing if it is no type: the engine would not parse it as one either)."""
        policy.check_structure_text(text)
        columns = self.column_list(f"c {text}")
        if columns is not None:
            self.literals(columns)

    def literals(self, tree: Node) -> None:
        """Every string literal of a parsed column list (a type's arguments: a zone), as the
        engine reads it, and its types (``policy.check_types``)."""
        policy.check_types(tree)
        for literal in {node.ident for node, _ in tree.walk() if policy.is_string(node)}:
            check_value(self.value(literal))


_values: dict[str, str] = {}
_values_lock = threading.Lock()
