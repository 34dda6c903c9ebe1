"""A string as the engine may read it, checked for a time zone named by a path.

The engine's time zone library opens a zone named ``file:<path>`` as a file: any user
probed host files with it, and a FIFO's or a pipe's path (``/proc/self/fd/N``) hung the
engine's time zone lock past every time limit, and every query and insert behind it. A
string reaches the engine in several forms: as written, and with its escapes undone once
more each time it is read again (a parameter's value is read escaped; a type name in a
string is parsed again). ``check_value`` refuses ``file:`` in any of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from collector.sqlhttp.errors import denied


def check_value(text: str) -> None:
    """Refuse a string (a literal, a quoted name, a parameter's or a setting's value) that
    names a time zone by a path: the engine's time zone library opens ``file:<path>`` (any
    user probed host files so, and a pipe's path, /proc/self/fd/N, hung the engine's time
    zone lock past every time limit). Checked in every form the engine may read it in: as
    written, and with its escapes undone once more each time (a parameter's value is read
    escaped, a type name in a string is parsed again: ``'fil\\\\x65:'`` became ``file:``)."""
    for form in _unescapings(text):
        if "file:" in form.lower():
            raise denied("a value holding 'file:' is not allowed over HTTP: the engine opens "
                         "a time zone named file:<path> as a file")


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.S)
_ESCAPED = {"0": "\0", "a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t", "v": "\v"}
_MAX_UNESCAPINGS = 16


def _unescapings(text: str) -> Iterator[str]:
    """``text``, then with ClickHouse's backslash escapes undone, again and again until none
    is left (each pass shortens it); past _MAX_UNESCAPINGS passes it is refused."""
    for _ in range(_MAX_UNESCAPINGS):
        yield text
        undone = _ESCAPE.sub(_unescape, text) if "\\" in text else text
        if undone == text:
            return
        text = undone
    raise denied("a value escaped this many times over is not allowed over HTTP")


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    return chr(int(code[1:], 16)) if len(code) == 3 else _ESCAPED.get(code, code)


def unescaped(text: str) -> str:
    """``text`` with ClickHouse's backslash escapes undone once (as the engine reads a
    quoted name)."""
    return _ESCAPE.sub(_unescape, text) if "\\" in text else text
