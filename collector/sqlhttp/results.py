"""A read-only user's result, bounded once formatted.

chDB's ``query`` formats a whole result into a buffer of its own, outside the query's memory
limit, and the engine's ``max_result_bytes`` counts a constant column once: ``SELECT
repeat('x', 1000) FROM numbers(4000000)`` took 4 GB of the collector's memory before the
interface could look at its size (other users' queries failed on the total limit meanwhile).
So a read-only user's statement writes its result ``INTO OUTFILE`` a pipe
(``EmbeddedStore.stream_statement``): the engine formats one document into it block by block,
under the query's memory limit, as the interface reads; past ``max_result_bytes`` the reading
stops and the query is killed.

The clause goes where ClickHouse's grammar wants it, before the statement's own ``FORMAT``
and the ``SETTINGS`` after that, and the engine's parse of the statement with it must be the
statement's own tree plus the file's name, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from collector.sqlhttp.errors import SqlError
from collector.sqlhttp.statements import Statement
from collector.sqlhttp.syntax import Node
from collector.storage.base import StorageError

# The file's name in the statement whose parse is checked (the real one is a pipe's path).
PLACEHOLDER = "'tagwerk-result'"


def with_outfile(sql: str, st: Statement) -> Callable[[str], str]:
    """``sql`` (canonical, scanned into ``st``) with ``INTO OUTFILE path TRUNCATE``, given
    the quoted path."""
    raw = sql.encode()
    at = st.format_start if st.output_format else len(raw)
    head, tail = raw[:at].decode().rstrip(), raw[at:].decode()
    return lambda path: f"{head}\nINTO OUTFILE {path} TRUNCATE\n{tail}".rstrip()


def check_outfile_only(before: Node, after: Node) -> None:
    """``after`` (the parse of the statement with the placeholder file) is ``before`` with
    that file's name below its root, and nothing else."""
    kept = [c for c in after.children if (c.kind, c.name) != ("Literal", PLACEHOLDER)]
    if ((after.kind, after.name) != (before.kind, before.name)
            or len(kept) != len(after.children) - 1
            or [_shape(c) for c in kept] != [_shape(c) for c in before.children]):
        raise SqlError.of(48, "The result of this statement cannot be bounded in size for a "
                          "read-only user")


def _shape(node: Node) -> list[tuple[str, str, int]]:
    # Iteratively (trees can be deep): each node's kind, name and number of children.
    return [(n.kind, n.name, len(n.children)) for n, _ in node.walk()]


def read_bounded(pieces: Iterator[bytes], cap: int) -> memoryview:
    """The whole result, or a 396 once it passes ``cap`` bytes (the query is then killed:
    the caller closes ``pieces``)."""
    out = bytearray()
    try:
        for piece in pieces:
            out += piece
            if len(out) > cap:
                raise SqlError.of(396, f"The result is more than max_result_bytes ({cap}) "
                                  "once formatted")
    except StorageError as exc:
        raise SqlError.from_engine(exc) from None
    return memoryview(out)
