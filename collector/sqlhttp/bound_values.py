"""Query parameters in an INSERT's VALUES data (``VALUES ({id:UInt32}, {name:String})``),
substituted as literals before the engine reads the data.

The engine reads VALUES data as literals only (``calls.LITERAL_VALUES``): interpreted as SQL,
it ran what no check saw (``file()``, subqueries, time zones). A placeholder is not a
literal, so each is replaced by its value written by the engine as a VALUES literal
(``formatRowNoNewline('Values', {id:UInt32})``), in a statement that passes the same checks
as any other. Finding the placeholders is this module's lexing, but nothing here decides
what may run: a placeholder it misses stays for the engine to refuse, and whatever it puts
in is parsed as a literal or refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from collector.sqlhttp.errors import SqlError
from collector.sqlhttp.statements import tokens


class Placeholder(NamedTuple):
    start: int
    end: int
    expression: str  # {name:Type}


def placeholders(data: bytes) -> list[Placeholder]:
    """The ``{name:Type}`` placeholders of VALUES data, outside strings: a ``{`` followed
    by a name and a colon (a map literal's ``{`` is followed by a key, a literal)."""
    found: list[Placeholder] = []
    significant = list(tokens(data, comments=True))
    opened, depth = 0, 0  # depth: of braces inside the placeholder that starts at opened
    for at, token in enumerate(significant):
        if token.kind != "other":
            continue
        if token.text == b"{" and depth == 0:
            name, colon = (significant[at + 1 : at + 3] + [None, None])[:2]
            if name and name.kind == "word" and colon and colon.text == b":":
                opened, depth = token.start, 1
        elif token.text == b"{" and depth:
            depth += 1
        elif token.text == b"}" and depth:
            depth -= 1
            if depth == 0:
                text = data[opened : token.end].decode("utf-8", "replace")
                found.append(Placeholder(opened, token.end, text))
    return found


def substitute(data: bytes, run: Callable[[str], Any]) -> bytes:
    """``data`` with each placeholder replaced by its value as a VALUES literal. ``run``
    checks and runs a SELECT with the request's parameters, and returns its rows as
    dictionaries."""
    found = placeholders(data)
    if not found:
        return data
    distinct = list(dict.fromkeys(p.expression for p in found))
    columns = ", ".join(f"formatRowNoNewline('Values', {expression}) AS v{i}"
                        for i, expression in enumerate(distinct))
    [row] = run(f"SELECT {columns}")
    literals = {}
    for i, expression in enumerate(distinct):
        written = row.get(f"v{i}")
        if not isinstance(written, str) or not (written.startswith("(")
                                                and written.endswith(")")):
            raise SqlError.of(457, f"the query parameter {expression} has no value to insert")
        literals[expression] = written[1:-1].encode()
    out, at = [], 0
    for placeholder in found:
        out += [data[at : placeholder.start], literals[placeholder.expression]]
        at = placeholder.end
    out.append(data[at:])
    return b"".join(out)
