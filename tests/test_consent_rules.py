"""consent/: the tw_consent and tw_id cookies, the GPC rule, click-id stripping (pure)."""

from __future__ import annotations

import random
import string

import pytest

from consent.cookie import (
    DEVICE_MAX_AGE,
    MAX_AGE_DAYS,
    ConsentCookie,
    DeviceCookie,
    device_clear_cookie,
    device_set_cookie,
    latest_consent,
    new_device_id,
    parse_consent,
    parse_device,
    read_cookies,
)
from consent.enforce import (
    CLICK_IDS,
    ConsentRule,
    consent_rule,
    effective_consent,
    enforce_row,
    gpc_removes_marketing,
    strip_props,
    strip_url,
)

NOW = 1_795_000_000
CID = "8f3a0c1d2e3f405162738495a6b7c8e1"
POLICY = "3c1d0e7a9b2f4c11"


def value(granted="necessary,analytics", seconds=NOW - 60, how="banner", cid=CID,
          policy=POLICY, version="v1") -> str:
    return f"{version}.{cid}.{policy}.{granted}.{seconds}.{how}"


# -- tw_consent -------------------------------------------------------------------------------


def test_a_valid_cookie():
    cookie = parse_consent(value(), NOW)
    assert cookie == ConsentCookie(CID, POLICY, frozenset({"necessary", "analytics"}),
                                   NOW - 60, "banner")


@pytest.mark.parametrize(("raw", "granted"), [
    (value(granted=""), set()),  # everything optional refused
    (value(granted="necessary"), {"necessary"}),
    (value(granted="necessary,analytics,personalization,marketing"),
     {"necessary", "analytics", "personalization", "marketing"}),
    (value(granted="necessary,loyalty_club"), {"necessary", "loyalty_club"}),  # a site's own
    (value(granted="necessary%2Canalytics"), {"necessary", "analytics"}),  # encodeURIComponent
    (value(granted="necessary%2canalytics"), {"necessary", "analytics"}),
    ('"' + value() + '"', {"necessary", "analytics"}),  # RFC 6265 quoted value
])
def test_valid_variants(raw, granted):
    cookie = parse_consent(raw, NOW)
    assert cookie is not None and cookie.granted == granted


@pytest.mark.parametrize("how", ["banner", "api", "gcm", "gpc"])
def test_every_how(how):
    assert parse_consent(value(how=how), NOW).how == how


def test_hex_is_case_insensitive_and_stored_lower_case():
    cookie = parse_consent(value(cid=CID.upper(), policy=POLICY.upper()), NOW)
    assert (cookie.consent_id, cookie.policy) == (CID, POLICY)


MALFORMED = [
    ("empty", ""),
    ("garbage", "hello"),
    ("version 2", value(version="v2")),
    ("no version", value()[3:]),
    ("a part missing", value().rsplit(".", 1)[0]),
    ("a part too many", value() + ".x"),
    ("dots in granted", value(granted="necessary.analytics")),
    ("consent id short", value(cid=CID[:31])),
    ("consent id long", value(cid=CID + "0")),
    ("consent id not hex", value(cid="g" * 32)),
    ("consent id uuid", value(cid="8f3a0c1d-2e3f-4051-6273-8495a6b7c8e1")),
    ("policy short", value(policy=POLICY[:15])),
    ("policy not hex", value(policy="z" * 16)),
    ("purpose upper case", value(granted="Analytics")),
    ("purpose starts with digit", value(granted="1st")),
    ("purpose too long", value(granted="a" * 33)),
    ("purpose with dash", value(granted="ad-storage")),
    ("empty purpose", value(granted="necessary,,analytics")),
    ("trailing comma", value(granted="necessary,")),
    ("purpose twice", value(granted="analytics,analytics")),
    ("too many purposes", value(granted=",".join(f"p{i}" for i in range(17)))),
    ("space in list", value(granted="necessary, analytics")),
    ("seconds not a number", value(seconds="soon")),
    ("seconds negative", value(seconds="-5")),
    ("seconds fraction", value(seconds="1795000000.5")),
    ("seconds huge", value(seconds="9" * 13)),
    ("seconds empty", value(seconds="")),
    ("unknown how", value(how="popup")),
    ("how upper case", value(how="BANNER")),
    ("other percent escape", value(granted="necessary%20analytics")),
    ("too long", value() + "x" * 700),
    ("unbalanced quote", '"' + value()),
    ("control character", value(how="banner\x00")),
    ("non-ASCII", value(granted="analytics\u00e9")),
    ("older than ten years", value(seconds=NOW - MAX_AGE_DAYS * 86400 - 1)),
    ("ten years in the future", value(seconds=NOW + MAX_AGE_DAYS * 86400 + 1)),
]


@pytest.mark.parametrize("raw", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_cookie_is_no_decision(raw):
    assert parse_consent(raw, NOW) is None


def test_age_limit_is_inclusive_and_expiry_is_the_browsers_business():
    assert parse_consent(value(seconds=NOW - MAX_AGE_DAYS * 86400), NOW) is not None
    assert parse_consent(value(seconds=NOW - 400 * 86400), NOW) is not None  # past lifetime
    assert parse_consent(value(seconds=NOW + 3600), NOW) is not None  # a fast clock


def test_a_cookie_for_another_policy_is_stale():
    assert parse_consent(value(), NOW, policy=POLICY) is not None
    assert parse_consent(value(), NOW, policy=POLICY.upper()) is not None
    assert parse_consent(value(), NOW, policy="0123456789abcdef") is None


def test_non_strings_and_random_bytes_never_raise():
    assert parse_consent(None, NOW) is None  # type: ignore[arg-type]
    assert parse_consent(b"v1", NOW) is None  # type: ignore[arg-type]
    rng = random.Random(7)
    alphabet = string.printable + "\u00e9\u2603\x00"
    base = value()
    for _ in range(3000):
        chars = list(base)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        parse_consent("".join(chars), NOW)
        parse_consent("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))), NOW)


def test_the_newest_valid_decision_wins():
    older = value(granted="necessary,analytics,marketing", seconds=NOW - 500)
    newer = value(granted="necessary", seconds=NOW - 5, how="api")
    assert latest_consent([older, newer], NOW).how == "api"
    assert latest_consent([newer, older], NOW).how == "api"
    assert latest_consent(["junk", older], NOW).decided_at == NOW - 500
    assert latest_consent(["junk"], NOW) is None
    assert latest_consent([], NOW) is None


def test_read_cookies_finds_ours_only():
    header = (f"_ga=GA1.2.3; tw_consent={value()}; xtw_id=nope; tw_id2=nope;tw_id=abc ; "
              "tw_id=second; other=tw_id=nope")
    consent, device = read_cookies(header)
    assert consent == [value()]
    assert device == ["abc", "second"]
    assert read_cookies(None) == ([], [])
    assert read_cookies("") == ([], [])
    assert read_cookies("a=1; b=2") == ([], [])
    assert read_cookies("tw_id") == ([], [])


# -- tw_id ------------------------------------------------------------------------------------


def test_device_ids_are_128_bit_url_safe():
    ids = {new_device_id() for _ in range(1000)}
    assert len(ids) == 1000
    for device_id in ids:
        assert len(device_id) == 22
        assert set(device_id) <= set(string.ascii_letters + string.digits + "-_")
        assert parse_device([device_id]) == DeviceCookie(device_id, 0)


def test_parse_device():
    good = "AbCdEfGhIjKlMnOpQrSt-_"
    assert parse_device([f"{good}.20454"]) == DeviceCookie(good, 20454)
    assert parse_device([good]) == DeviceCookie(good, 0)  # no day: refreshed at once
    assert parse_device(["short.1", f"{good}.7"]) == DeviceCookie(good, 7)
    for bad in ["", good[:21], good + "x", good.replace("A", "+"), good + ".", good + ".x",
                good + ".12345678", good + ".1.2", "<script>", "x" * 5000]:
        assert parse_device([bad]) is None, bad


def test_set_and_clear_cookie_attributes():
    set_ = device_set_cookie("AbCdEfGhIjKlMnOpQrSt-_", 20454, secure=True, domain=".shop.example")
    assert set_ == ("tw_id=AbCdEfGhIjKlMnOpQrSt-_.20454; Path=/; Max-Age=34128000; HttpOnly; "
                    "SameSite=Lax; Secure; Domain=.shop.example")
    assert DEVICE_MAX_AGE == 395 * 86400  # 13 months
    plain = device_set_cookie("AbCdEfGhIjKlMnOpQrSt-_", 1, secure=False)
    assert "Secure" not in plain and "Domain" not in plain
    clear = device_clear_cookie(secure=True)
    assert clear.startswith("tw_id=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970")
    assert "Secure" in clear and "Domain" not in clear


# -- GPC and the effective consent ----------------------------------------------------------


def cookie(granted: str, how: str) -> ConsentCookie:
    return parse_consent(value(granted=granted, how=how), NOW)


GPC_TABLE = [
    # gpc, cookie (granted, how) or None, marketing removed?
    (False, None, False),
    (False, ("necessary,analytics,marketing", "banner"), False),
    (True, None, True),
    (True, ("necessary,analytics,marketing", "banner"), False),  # switched on by hand
    (True, ("necessary,analytics,marketing", "api"), False),  # the site's own CMP UI
    (True, ("necessary,analytics,marketing", "gcm"), True),  # another tool's mapping
    (True, ("necessary,analytics,marketing", "gpc"), True),  # shaped by GPC itself
    (True, ("necessary,analytics", "banner"), True),  # explicit, but not for marketing
    (True, ("necessary", "api"), True),
]


@pytest.mark.parametrize(("gpc", "given", "removed"), GPC_TABLE)
def test_gpc_rule_table(gpc, given, removed):
    decision = cookie(*given) if given else None
    assert gpc_removes_marketing(gpc, decision) is removed
    full = ["analytics", "marketing", "necessary"]
    effective = effective_consent(full, decision, gpc)
    assert ("marketing" in effective) is (not removed and (
        decision is None or "marketing" in decision.granted))


def test_cookie_intersects_the_hits_list():
    decision = cookie("necessary,analytics", "banner")
    assert effective_consent(["analytics", "marketing"], decision, False) == ["analytics"]
    assert effective_consent(["marketing"], decision, False) == []
    assert effective_consent([], decision, False) == []
    # The cookie never adds what the hit did not claim.
    assert effective_consent(["necessary"], cookie("necessary,analytics,marketing", "banner"),
                             False) == ["necessary"]
    # No cookie: the hit's list stands (a site with another CMP).
    assert effective_consent(["analytics", "marketing"], None, False) == ["analytics",
                                                                         "marketing"]


def test_consent_rule():
    assert consent_rule(None, False) is None
    rule = consent_rule(None, True)
    assert rule.effective(["analytics", "marketing"]) == ["analytics"]
    rule = ConsentRule(cookie("necessary,analytics,marketing", "banner"), True)
    assert rule.effective(["analytics", "marketing"]) == ["analytics", "marketing"]
    assert "gpc=True" in repr(rule)


# -- click ids --------------------------------------------------------------------------------


STRIP = [
    ("https://shop.example/", "https://shop.example/"),
    ("https://shop.example/p?gclid=abc", "https://shop.example/p"),
    ("https://shop.example/p?gclid=abc&x=1", "https://shop.example/p?x=1"),
    ("https://shop.example/p?x=1&gclid=abc", "https://shop.example/p?x=1"),
    ("https://shop.example/p?x=1&fbclid=a&y=2&msclkid=b", "https://shop.example/p?x=1&y=2"),
    ("https://shop.example/p?GCLID=abc&x=1", "https://shop.example/p?x=1"),
    ("https://shop.example/p?ScCid=abc&x=1", "https://shop.example/p?x=1"),
    ("https://shop.example/p?gclid&x=1", "https://shop.example/p?x=1"),  # no value
    ("https://shop.example/p?gclid=abc#top", "https://shop.example/p#top"),
    ("https://shop.example/p?x=%2F%20+&gclid=1&y=a%26b#h?gclid=2&z",
     "https://shop.example/p?x=%2F%20+&y=a%26b#h?z"),
    ("https://shop.example/#/cart?_gl=1*abc*_ga*MTIz&step=2",
     "https://shop.example/#/cart?step=2"),
    ("https://shop.example/p?gclidx=1&xgclid=2&utm_source=ads",
     "https://shop.example/p?gclidx=1&xgclid=2&utm_source=ads"),  # only whole names
    ("https://shop.example/p?q=gclid%3D1", "https://shop.example/p?q=gclid%3D1"),  # a value
    ("https://shop.example/p?a=1&&gclid=2", "https://shop.example/p?a=1&"),
    ("https://shop.example/gclid=1/p", "https://shop.example/gclid=1/p"),  # not the query
    ("https://shop.example/p?wbraid=1&gbraid=2&dclid=3&ttclid=4&twclid=5&li_fat_id=6&yclid=7",
     "https://shop.example/p"),
]


@pytest.mark.parametrize(("url", "expected"), STRIP)
def test_strip_url(url, expected):
    assert strip_url(url) == expected


def test_the_brief_list_is_covered():
    assert {"gclid", "fbclid", "msclkid", "ttclid", "dclid", "wbraid", "gbraid", "twclid",
            "li_fat_id", "yclid", "_gl"} <= CLICK_IDS
    assert all(name == name.lower() for name in CLICK_IDS)
    assert not {"utm_source", "utm_medium", "utm_campaign", "ref", "q"} & CLICK_IDS


def test_strip_url_properties():
    rng = random.Random(3)
    pieces = ["gclid=1", "GCLID", "_gl=x", "a=2", "b", "", "fbclid=", "x%26y", "?", "#", "="]
    for _ in range(3000):
        text = "https://s.example/p" + rng.choice(["?", "#", "?", ""]) + "&".join(
            rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        out = strip_url(text)
        head, _, fragment = out.partition("#")
        query = head.partition("?")[2]
        assert not {p.partition("=")[0].lower() for p in query.split("&")} & CLICK_IDS
        if "?" in fragment:
            tail = fragment.partition("?")[2]
            assert not {p.partition("=")[0].lower() for p in tail.split("&")} & CLICK_IDS
        assert strip_url(out) == out  # idempotent
        if not {p.partition("=")[0].lower() for p in text.replace("#", "&").replace(
                "?", "&").split("&")} & CLICK_IDS:
            assert out == text  # nothing to strip: untouched


def test_strip_props():
    props = {"gclid": "a", "FBCLID": "b", "plan": "gold",
             "link": "https://shop.example/x?fbclid=1&k=2", "note": "http is fine ?"}
    out = strip_props(props)
    assert out == {"plan": "gold", "link": "https://shop.example/x?k=2", "note": "http is fine ?"}
    assert props["gclid"] == "a"  # the input is left alone
    same = {"plan": "gold"}
    assert strip_props(same) is same


def row(consent, **fields):
    base = {"consent": consent, "url": "https://shop.example/p?gclid=1&a=2",
            "referrer": "https://shop.example/l?msclkid=9", "props": {"gclid": "1", "a": "b"}}
    return {**base, **fields}


def test_enforce_row():
    stripped = enforce_row(row(["analytics"]))
    assert stripped["url"] == "https://shop.example/p?a=2"
    assert stripped["referrer"] == "https://shop.example/l"
    assert stripped["props"] == {"a": "b"}
    kept = enforce_row(row(["analytics", "marketing"]))
    assert kept == row(["analytics", "marketing"])
    empty = enforce_row(row([], url="", referrer="", props={}))
    assert empty["url"] == "" and empty["props"] == {}
