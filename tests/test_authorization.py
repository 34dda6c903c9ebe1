"""One reading of the Authorization header for every endpoint that takes a key."""

from __future__ import annotations

import base64

import pytest

from collector.web.authorization import basic_credentials, bearer_token, split_authorization


def basic(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return "Basic " + base64.b64encode(raw).decode()


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer k1", "k1"),
    ("bearer k1", "k1"),
    ("BEARER   k1  ", "k1"),
    ("Bearer", ""),
    ("Bearer ", ""),
    ("Bearerk1", ""),
    ("Bearer\tk1", ""),  # only a space separates the scheme (RFC 9110 11.4)
    ("Basic k1", ""),
    ("Token k1", ""),
    ("", ""),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


@pytest.mark.parametrize(("header", "credentials"), [
    (basic("user:secret"), ("user", "secret")),
    (basic("user:se:cret"), ("user", "se:cret")),
    (basic("writekey"), ("writekey", "")),  # Segment: the write key as the user, no password
    (basic(":"), ("", "")),
    ("basic " + base64.b64encode(b"u:p").decode() + "  ", ("u", "p")),
    ("Basic not base64!", None),
    ("Basic dXNlcg", None),  # padding missing: not strict base64
    (basic(b"\xff:x"), None),  # not UTF-8
    ("Bearer " + base64.b64encode(b"u:p").decode(), None),
    ("Basic", ("", "")),  # nothing: an empty user, which each caller refuses
])
def test_basic_credentials(header, credentials):
    assert basic_credentials(header) == credentials


def test_split_authorization_keeps_the_scheme_as_sent():
    assert split_authorization("NTLM  abc ") == ("NTLM", "abc")
