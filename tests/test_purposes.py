"""One purpose-id rule (consent/purposes.py) for the hit's consent, the consent log, the
tw_consent cookie and the container: a value one of them refuses, none of them keeps."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.containers import default_container, validate
from collector.enrich.useragent import parse_agent
from collector.ingest.events import Context, EventError, normalize
from consent.cookie import parse_consent
from consent.log import DecisionError, decision_row
from consent.purposes import BUILT_IN, is_purpose_id

CID = "0123456789abcdef0123456789abcdef"
POLICY = "0123456789abcdef"

IDS = [
    ("analytics", True),
    ("a", True),
    ("ads_2", True),
    ("a" * 32, True),
    ("a" * 33, False),
    ("analytics\n", False),  # "^...$" lets a final newline through
    ("\nanalytics", False),
    ("Analytics", False),
    ("2fa", False),
    ("ads-2", False),
    ("", False),
]


def event_keeps(purpose: str) -> bool:
    ctx = Context("s", dt.datetime.now(dt.UTC), "web", parse_agent("x"))
    try:
        normalize({"event": "e", "consent": [purpose]}, ctx)
    except EventError:
        return False
    return True


def log_keeps(purpose: str) -> bool:
    try:
        decision_row({"consent_id": CID, "granted": [purpose], "denied": [], "policy": POLICY,
                      "how": "banner"}, "s", "2026-01-02 03:04:05.678", "desktop", "DE")
    except DecisionError:
        return False
    return True


def cookie_keeps(purpose: str) -> bool:
    now = 1_700_000_000
    return parse_consent(f"v1.{CID}.{POLICY}.{purpose}.{now}.banner", now) is not None


def container_keeps(purpose: str) -> bool:
    doc = default_container()
    purposes = doc["consent"]["purposes"]
    purposes.append({"id": purpose, "default": False})
    field = f"consent.purposes[{len(purposes) - 1}].id"
    return not [e for e in validate(doc) if e.field == field]


@pytest.mark.parametrize(("purpose", "valid"), IDS)
def test_every_place_judges_a_purpose_id_alike(purpose, valid):
    assert is_purpose_id(purpose) is valid
    assert event_keeps(purpose) is valid
    assert log_keeps(purpose) is valid
    if purpose and "\n" not in purpose:  # "": no purpose granted; a cookie holds no "\n"
        assert cookie_keeps(purpose) is valid
    if purpose not in BUILT_IN:  # those are in the container already
        assert container_keeps(purpose) is valid


def container_with(count: int) -> dict:
    doc = default_container()
    purposes = doc["consent"]["purposes"]
    purposes += [{"id": f"extra_{i}", "default": False} for i in range(count - len(purposes))]
    return doc


@pytest.mark.parametrize("count", [16, 17, 20])
def test_every_place_keeps_as_many_purposes_as_a_container_may_have(count):
    """A container may list no more purposes than a decision granting all of them can
    carry: in the cookie, the log and every hit (before, a container of 17 to 20 passed,
    and granting them all made every hit and the decision a 400)."""
    doc = container_with(count)
    ids = [p["id"] for p in doc["consent"]["purposes"]]
    allowed = not [e for e in validate(doc) if e.field.startswith("consent.purposes")]
    ctx = Context("s", dt.datetime.now(dt.UTC), "web", parse_agent("x"))
    try:
        normalize({"event": "e", "consent": ids}, ctx)
        event = True
    except EventError:
        event = False
    try:
        decision_row({"consent_id": CID, "granted": ids, "denied": [], "policy": POLICY,
                      "how": "banner"}, "s", "2026-01-02 03:04:05.678", "desktop", "DE")
        log = True
    except DecisionError:
        log = False
    now = 1_700_000_000
    cookie = parse_consent(f"v1.{CID}.{POLICY}.{','.join(ids)}.{now}.banner", now) is not None
    assert (event, log, cookie) == (allowed, allowed, allowed), count
