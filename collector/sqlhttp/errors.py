"""ClickHouse's error format and the HTTP status of each error code."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

_NAMES = {
    36: "BAD_ARGUMENTS",
    48: "NOT_IMPLEMENTED",
    62: "SYNTAX_ERROR",
    73: "UNKNOWN_FORMAT",
    78: "UNKNOWN_TYPE_OF_QUERY",
    115: "UNKNOWN_SETTING",
    164: "READONLY",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    209: "SOCKET_TIMEOUT",
    216: "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING",
    229: "QUERY_IS_TOO_LARGE",
    271: "CANNOT_DECOMPRESS",
    358: "INTO_OUTFILE_NOT_ALLOWED",
    396: "TOO_MANY_ROWS_OR_BYTES",
    372: "SESSION_NOT_FOUND",
    373: "SESSION_IS_LOCKED",
    374: "INVALID_SESSION_TIMEOUT",
    497: "ACCESS_DENIED",
    516: "AUTHENTICATION_FAILED",
    700: "USER_SESSION_LIMIT_EXCEEDED",
    779: "UNSUPPORTED_MEDIA_TYPE",
    1001: "STD_EXCEPTION",
    1002: "UNKNOWN_EXCEPTION",
}

# ClickHouse's exceptionCodeToHTTPStatus; every other code (READONLY among them) is a 500.
STATUS = {
    194: 401,  # REQUIRED_PASSWORD
    # UNKNOWN_USER, WRONG_PASSWORD, ACCESS_DENIED, SET_NON_GRANTED_ROLE, AUTHENTICATION_FAILED
    **dict.fromkeys((192, 193, 497, 512, 516), 403),
    # BAD_ARGUMENTS, CANNOT_PARSE_*, SYNTAX_ERROR, INCORRECT_DATA, TYPE_MISMATCH, bad ASTs...
    **dict.fromkeys(
        (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44, 37, 123, 8, 167, 168,
         223, 62, 117, 53, 321),
        400,
    ),
    # UNKNOWN_TABLE, _FUNCTION, _IDENTIFIER, _TYPE, _DATABASE, _SETTING, _FORMAT...
    **dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404),
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    # SOCKET_TIMEOUT, CANNOT_OPEN_FILE, CANNOT_SCHEDULE_TASK, TOO_MANY_SIMULTANEOUS_QUERIES
    **dict.fromkeys((209, 76, 439, 202), 503),
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
    779: 415,  # UNSUPPORTED_MEDIA_TYPE
    216: 409,  # QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING (ClickHouse: a 500; a client's doing)
}

_CODE = re.compile(r"Code: (\d+)\.")
VERSION_SUFFIX = re.compile(r"\(version [^)]*\)\s*$")


class SqlError(Exception):
    """A ClickHouse exception: its code and its text ``Code: N. DB::Exception: ... (NAME)``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    @classmethod
    def of(cls, code: int, message: str) -> SqlError:
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({_NAMES[code]})")

    @classmethod
    def from_engine(cls, exc: Exception) -> SqlError:
        # chDB prefixes some messages ("Streaming insert finish failed: Code: 27. ...").
        text = str(exc)
        at = text.find("Code: ")
        match = _CODE.match(text, at) if at >= 0 else None
        if match is None:
            return cls.of(1001, text or type(exc).__name__)
        return cls(int(match.group(1)), text[at:].strip())


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    # chDB raises ChdbError (a RuntimeError) or a plain RuntimeError from send_insert.
    try:
        yield
    except RuntimeError as exc:
        raise SqlError.from_engine(exc) from None


def denied(message: str) -> SqlError:
    """A statement refused by the interface's own checks (policy, syntax, strings, values)."""
    return SqlError.of(497, f"Not enough privileges: {message}")
