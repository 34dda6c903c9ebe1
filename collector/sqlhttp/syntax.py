"""A statement as ClickHouse itself parses it: its canonical text and its syntax tree.

The engine formats the client's text (``formatQuery``: comments and odd spacing gone, exactly
one statement or a syntax error) and dumps the tree of that canonical text (``EXPLAIN AST``,
which parses and runs nothing). What a statement may do is decided on that tree
(``policy.py``), and the canonical text, not the client's, is what runs. The client's text
only ever reaches the engine as a bound parameter, so it cannot add a statement of its own.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from collector.sqlhttp.config import Connection
from collector.sqlhttp.errors import SqlError, denied, engine_errors
from collector.sqlhttp.statements import tokens
from collector.sqlhttp.values import check_value
from collector.storage.base import escape_param

# One line of EXPLAIN AST: an indentation of one space per level, the node's kind, maybe a
# name, maybe "(children N)". Identifiers are printed raw, so a name with a line break can
# fake lines. Every real node still has its own line, so a fake can only add a node, never
# hide one (and the policy only ever refuses on what it finds); the declared child counts,
# checked below, refuse a tree whose fakes do not fit them.
_CHILDREN = re.compile(r" \(children (\d+)\)$")
_ALIAS = " (alias "


@dataclass
class Node:
    kind: str  # "Function", "TableIdentifier", "SelectWithUnionQuery", ...
    name: str  # what follows the kind: a function's or table's name, a literal...
    children: list[Node] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[Node, Node | None]]:
        """Every node of the tree with its parent (iteratively: trees can be deep)."""
        stack: list[tuple[Node, Node | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((child, node) for child in reversed(node.children))

    @property
    def ident(self) -> str:
        """The name without a trailing alias (``tagwerk.events (alias e)``)."""
        return self.name.split(_ALIAS, 1)[0]


@dataclass(frozen=True)
class Parsed:
    sql: str  # the canonical text, to execute instead of the client's
    tree: Node


def parse(conn: Connection, sql: str, binds: Mapping[str, str]) -> Parsed:
    """The engine's parse of ``sql``; a syntax error is the engine's own error. Kept for
    statements that come again (a collector's inserts and periodic queries through the
    server backend): the parse is the same for the same text and parameters, and costs two
    engine calls (about 3 ms)."""
    key = (sql, tuple(sorted(binds.items())))
    with _lock:
        parsed = _parsed.get(key)
        if parsed is not None:
            _parsed.move_to_end(key)
            return parsed
    with engine_errors():
        written = conn.query(
            "SELECT formatQuery({q:String})", "TSVRaw", params={"q": escape_param(sql)}
        ).bytes()
        try:  # a string's \x escapes are written as the bytes themselves
            canonical = written.decode()
        except UnicodeDecodeError:
            raise SqlError.of(36, "the statement's strings hold bytes that are not UTF-8: "
                              "write them as unhex('...')") from None
        if canonical.endswith("\n"):
            canonical = canonical[:-1]
        # Each reference to a parameter copies its value into the tree: a 500 KB value named
        # 100 times made a tree of 50 MB, and the engine's dump of it took a gigabyte.
        copies = sum(canonical.count("{" + name + ":") * len(value)
                     for name, value in binds.items())
        if copies > MAX_TREE_BYTES:
            raise _too_large(copies)
        _check_parameter_types(canonical)
        # TSVRaw returns the text as it is; an escaped form would differ from what runs.
        dump = conn.query("EXPLAIN AST " + canonical, "TSVRaw", params=dict(binds)).bytes()
    if len(dump) > MAX_TREE_BYTES:
        raise _too_large(len(dump))
    parsed = Parsed(canonical, _tree(dump.decode("utf-8", "replace")))
    # Only small ones are kept: a large parameter, named many times, made a tree of 50 MB.
    if len(sql) + sum(len(k) + len(v) for k, v in binds.items()) <= _MAX_KEPT_TEXT \
            and len(dump) <= _MAX_KEPT_TEXT * 4:
        with _lock:
            _parsed[key] = parsed
            if len(_parsed) > _MAX_KEPT:
                _parsed.popitem(last=False)
    return parsed


_MAX_KEPT, _MAX_KEPT_TEXT = 512, 8192
MAX_TREE_BYTES = 16 << 20
_parsed: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], Parsed] = OrderedDict()
_lock = threading.Lock()


def _check_parameter_types(canonical: str) -> None:
    """A query parameter's type is built while the engine parses the statement with its
    values, before any check of the tree: a zone in it (``DateTime('file:...')``, or written
    x'...') was opened as a file then, and a FIFO's path hung the engine's time zone lock.
    So each string in a parameter's type is checked here (``{at:DateTime64(3, 'UTC')}``
    stays), and one written in hex, in bits or as a $$ string is refused."""
    inside, previous = False, None
    for token in tokens(canonical.encode()):
        if token.text == b"{":
            inside = True
        elif token.text == b"}":
            inside = False
        elif inside and token.kind == "string":
            if token.text.startswith(b"$") or (previous is not None and previous.kind == "word"
                                               and previous.end == token.start):
                raise denied("a string in a query parameter's type must be written plainly "
                             "('UTC'), not in hex, bits or $$")
            check_value(token.text.decode("utf-8", "replace"))
        previous = token


def _too_large(size: int) -> SqlError:
    return SqlError.of(229, f"The statement's syntax tree would be {size} bytes with its "
                       f"parameters, more than {MAX_TREE_BYTES}: bind fewer or smaller ones")


def _tree(dump: str) -> Node:
    # Lines end with \n alone: other control characters (raw in string literals, e.g.
    # '\x01') break no line here.
    lines = dump.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    stack: list[tuple[Node, int, int]] = []  # node, depth, declared children
    root: Node | None = None
    for line in lines:
        body = line.lstrip(" ")
        depth = len(line) - len(body)
        match = _CHILDREN.search(body)
        declared = int(match.group(1)) if match else 0
        if match:
            body = body[: match.start()]
        kind, _, name = body.partition(" ")
        node = Node(kind, name.strip())
        while stack and stack[-1][1] >= depth:
            _closed(stack.pop())
        if not stack:
            if root is not None or depth != 0:
                raise _unverifiable()
            root = node
        elif depth != stack[-1][1] + 1:
            raise _unverifiable()
        else:
            stack[-1][0].children.append(node)
        stack.append((node, depth, declared))
    while stack:
        _closed(stack.pop())
    if root is None:
        raise SqlError.of(62, "Syntax error: Empty query")
    return root


def _closed(entry: tuple[Node, int, int]) -> None:
    node, _, declared = entry
    if len(node.children) != declared:
        raise _unverifiable()


def _unverifiable() -> SqlError:
    # Only a line break inside an identifier or alias leads here.
    return SqlError.of(
        36, "The query's syntax tree could not be verified: identifiers and aliases must not "
        "contain line breaks"
    )
