"""A small lexer: where an INSERT's inline data starts, and a query's FORMAT clause.

It frames requests and allows nothing a statement may do: that is decided on the engine's
own parse of it (syntax.py, policy.py), and the engine's canonical text runs. The policy
reads the canonical text's words only to refuse clauses the engine's tree leaves out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from collector.sqlhttp.errors import SqlError

# Just enough of ClickHouse's lexer to find where a statement's parts are. Possessive
# quantifiers keep unterminated input linear.
# Whitespace is unnamed; comments as ClickHouse's lexer takes them (--, /* */, and # followed
# by a space or !); a word may hold $ after its first character, as ClickHouse's; a "run"
# is bytes that mean nothing here (numbers, operators, binary data), matched at once to keep
# a large VALUES list cheap to scan.
_TOKEN = re.compile(
    rb"""
      [ \t\r\n\f\v]++
    | (?P<comment>--[^\n]*+|/\*(?:[^*]++|\*(?!/))*+(?:\*/)?|\#[ !][^\n]*+)
    | (?P<string>'(?:[^'\\]++|\\.|'')*+'?
        | \$(?P<tag>[A-Za-z0-9_]*)\$(?:[^$]++|\$(?!(?P=tag)\$))*+(?:\$(?P=tag)\$)?)
    | (?P<quoted>"(?:[^"\\]++|\\.|"")*+"?|`(?:[^`\\]++|\\.|``)*+`?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*+)
    | (?P<run>[^A-Za-z_ \t\r\n\f\v'"`$\-/;()\[\]{}\#]++)
    | (?P<other>.)
    """,
    re.X | re.S,
)
# A string or quoted identifier the lexer found closed (with its closing quote).
_CLOSED = {
    "string": re.compile(rb"'(?:[^'\\]|\\.|'')*'", re.S),
    "quoted": re.compile(rb'"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`', re.S),
}
_OPEN, _CLOSE = frozenset(b"([{"), frozenset(b")]}")
_RESULT_KEYWORDS = frozenset(
    (b"select", b"with", b"from", b"show", b"describe", b"desc", b"exists", b"explain",
     b"check", b"kill", b"watch", b"(")
)


class Token(NamedTuple):
    kind: str
    text: bytes
    start: int
    end: int

    @property
    def name(self) -> bytes:
        """A word, or a quoted identifier without its quotes, lowercased."""
        return (self.text[1:-1] if self.kind == "quoted" else self.text).lower()


_NO_TOKEN = Token("", b"", 0, 0)


def tokens(sql: bytes, comments: bool = False) -> Iterator[Token]:
    """The significant tokens of ``sql``: whitespace is skipped, and comments unless asked
    for."""
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind and (comments or kind != "comment"):
            yield Token(kind, match.group(), match.start(), match.end())


def plain(token: Token) -> bool:
    """Whether a token is as ClickHouse's formatting (formatQuery) writes one: no comment,
    no heredoc ($$...$$, written as a quoted string), every string and quoted name closed.
    Anything else in a canonical text means the lexer reads it otherwise than the engine."""
    if token.kind == "comment" or token.text.startswith(b"$"):
        return False
    closed = _CLOSED.get(token.kind)
    return closed is None or closed.fullmatch(token.text) is not None


@dataclass
class Statement:
    first: bytes = b""  # the first token (a keyword, or "("), lowercased; empty: no query
    output_format: str | None = None  # a query's own FORMAT clause
    format_start: int = 0  # where that clause starts
    insert_format: str | None = None  # INSERT ... FORMAT X, or "Values" for a trailing VALUES
    head_end: int = 0  # INSERT: where that clause starts
    data_start: int = 0  # INSERT: where the inline data starts

    @property
    def has_result(self) -> bool:
        return self.first in _RESULT_KEYWORDS


def scan_statement(sql: bytes, formats: Mapping[str, Format]) -> Statement:
    """Where ``sql``'s parts are. An INSERT's scan stops at its FORMAT clause: data follows."""
    st = Statement()
    depth, ended, data_follows = 0, False, False
    last = _NO_TOKEN  # the token before this one
    for tok in tokens(sql):
        if ended:  # a second statement: the engine's parse refuses it
            break
        if tok.kind == "other":
            depth = _depth(tok.text, depth)
            ended = tok.text == b";" and depth == 0
        elif tok.kind == "word":
            word = tok.text.lower()
            if not st.first:
                data_follows = word == b"insert"
            elif word == b"values" and data_follows and depth == 0:
                # INSERT ... VALUES: all that follows is data, as in ClickHouse, whatever it
                # says; it goes to the engine as data, never as statements.
                st.first = b"insert"
                st.insert_format, st.head_end, st.data_start = "Values", tok.start, tok.end
                return st
            elif word in (b"select", b"with") and depth == 0:
                data_follows = False  # INSERT ... SELECT: a FORMAT there starts no data
        st.first = st.first or tok.text.lower()
        fmt = _format_clause(last, tok, formats) if depth == 0 else None
        if fmt and data_follows:
            st.insert_format, st.head_end = fmt, last.start
            st.data_start = _data_start(sql, tok.end)
            return st
        if fmt:
            st.output_format, st.format_start = fmt, last.start
        last = tok
    return st


def _depth(bracket: bytes, depth: int) -> int:
    if bracket[0] in _OPEN:
        return depth + 1
    if bracket[0] in _CLOSE:
        return max(depth - 1, 0)
    return depth


def first_word(sql: bytes) -> bytes:
    return next(tokens(sql), _NO_TOKEN).text.lower()


def _format_clause(last: Token, tok: Token, formats: Mapping[str, Format]) -> str | None:
    # The format must be a known one: "INSERT INTO format FORMAT CSV" names a table "format".
    if tok.kind not in ("word", "quoted") or last.kind != "word" or last.name != b"format":
        return None
    known = formats.get(tok.name.decode("latin-1"))
    return known.name if known else None


def _data_start(sql: bytes, pos: int) -> int:
    # As ClickHouse: data starts after spaces and at most one line break past the format name.
    while pos < len(sql) and sql[pos] in b" \t\f":
        pos += 1
    if sql[pos : pos + 1] == b"\r":
        pos += 1
    if sql[pos : pos + 1] == b"\n":
        pos += 1
    return pos


def decode_text(sql: bytes) -> str:
    try:
        return sql.decode("utf-8")
    except UnicodeDecodeError:
        raise SqlError.of(36, "The query is not valid UTF-8") from None


@dataclass(frozen=True)
class Format:
    name: str
    content_type: str
