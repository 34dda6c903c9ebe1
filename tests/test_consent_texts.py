"""The banner's texts: GET /t/{site}/consent.json?lang=... (collector/tag/consent_texts.py)."""

from __future__ import annotations

import copy
import uuid

import orjson
import pytest

from collector.containers import DEFAULT_TEXTS, default_container
from collector.tag.consent_texts import GPC_NOTES, negotiate, texts_for
from collector.web.qvalues import accept_language
from tests.helpers import make_client
from tests.test_containers import ORIGINS, full

KEYS = {"lang", "title", "body", "accept_all", "reject_all", "settings", "save", "gpc",
        "purposes"}


@pytest.fixture(scope="module")
def env(store, tmp_path_factory):
    client, collector = make_client(store, tmp_path_factory.mktemp("consent-texts"))
    with client:
        yield client, collector


@pytest.fixture
def site(env):
    _, collector = env
    site_id = "texts-" + uuid.uuid4().hex[:10]
    collector.sites.create(site_id, list(ORIGINS))
    return site_id


def get(client, site, lang=None, **headers):
    params = {} if lang is None else {"lang": lang}
    return client.get(f"/t/{site}/consent.json", params=params, headers=headers)


# -- the endpoint -----------------------------------------------------------------------------


def test_default_container_in_german(env, site):
    client, _ = env
    r = get(client, site, "de")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.headers["content-language"] == "de"
    assert "Accept-Language" in r.headers["vary"]
    assert r.headers["etag"]
    body = r.json()
    assert set(body) == KEYS
    de = DEFAULT_TEXTS["de"]
    assert body["lang"] == "de"
    assert (body["title"], body["reject_all"], body["save"]) == (
        de["title"], "Alle ablehnen", "Auswahl speichern")
    assert body["gpc"] == GPC_NOTES["de"]
    assert body["purposes"] == [
        {"id": "necessary", "required": True, "name": "Notwendig",
         "description": de["purposes"]["necessary"]["description"]},
        {"id": "analytics", "required": False, "name": "Statistik",
         "description": de["purposes"]["analytics"]["description"]},
        {"id": "personalization", "required": False, "name": "Personalisierung",
         "description": de["purposes"]["personalization"]["description"]},
        {"id": "marketing", "required": False, "name": "Marketing",
         "description": de["purposes"]["marketing"]["description"]},
    ]


def test_english_is_the_fallback(env, site):
    client, _ = env
    for lang in ("en", "EN", "ja", "en-GB", "tlh"):
        r = get(client, site, lang)
        assert r.status_code == 200, lang
        assert r.json()["lang"] == "en", lang
        assert r.json()["accept_all"] == "Accept all"
    r = get(client, site)  # no lang, no Accept-Language
    assert r.json()["lang"] == "en" and r.json()["gpc"] == GPC_NOTES["en"]


def test_subtags_and_case(env, site):
    client, _ = env
    for lang in ("de-AT", "de-at", "DE", "de-CH-1996", "de-Latn-DE"):
        assert get(client, site, lang).json()["lang"] == "de", lang


def test_accept_language(env, site):
    client, _ = env
    assert get(client, site, **{"Accept-Language": "de-DE,de;q=0.9,en;q=0.8"}
               ).json()["lang"] == "de"
    assert get(client, site, **{"Accept-Language": "fr;q=0.9, de;q=0.5"}).json()["lang"] == "de"
    assert get(client, site, **{"Accept-Language": "de;q=0, en;q=0.1"}).json()["lang"] == "en"
    assert get(client, site, **{"Accept-Language": "*"}).json()["lang"] == "en"
    # lang wins over the header; an unknown lang falls through to the header.
    assert get(client, site, "en", **{"Accept-Language": "de"}).json()["lang"] == "en"
    assert get(client, site, "ja", **{"Accept-Language": "de"}).json()["lang"] == "de"
    # A malformed header is ignored, not refused.
    for header in ("%%%", "de;q=abc", ";;;,,,", "x" * 5000, "de-" + "a" * 40):
        r = get(client, site, **{"Accept-Language": header})
        assert r.status_code == 200, header
    assert get(client, site, **{"Accept-Language": "de;q=abc, en"}).json()["lang"] == "en"


def test_live_container_not_draft(env, site):
    client, collector = env
    c = collector.containers
    doc = full()
    doc["consent"]["texts"]["en"]["title"] = "Published title"
    c.put_draft(site, doc, ORIGINS)
    c.publish(site, origins=ORIGINS)
    draft = copy.deepcopy(doc)
    draft["consent"]["texts"]["en"]["title"] = "Draft title"
    c.put_draft(site, draft, ORIGINS)
    assert get(client, site, "en").json()["title"] == "Published title"


def test_purposes_follow_the_container(env, site):
    client, collector = env
    doc = default_container()
    consent = doc["consent"]
    consent["purposes"] = [{"id": "necessary", "required": True},
                           {"id": "marketing", "default": False},
                           {"id": "social", "default": True}]
    for lang, texts in consent["texts"].items():
        texts["purposes"].pop("analytics")
        texts["purposes"].pop("personalization")
        texts["purposes"]["social"] = {"name": f"Social ({lang})", "description": "Embeds"}
    consent["texts"]["fr"] = {**copy.deepcopy(consent["texts"]["en"]),
                              "title": "Vos choix", "accept_all": "Tout accepter"}
    collector.containers.put_draft(site, doc, ORIGINS)
    body = get(client, site, "fr-CA").json()
    assert body["lang"] == "fr" and body["title"] == "Vos choix"
    assert body["gpc"] == GPC_NOTES["fr"]
    assert [(p["id"], p["required"], p["name"]) for p in body["purposes"]] == [
        ("necessary", True, "Necessary"), ("marketing", False, "Marketing"),
        ("social", False, "Social (en)")]
    assert get(client, site, "de").json()["purposes"][2]["name"] == "Social (de)"


def test_etag_and_compression(env, site):
    client, _ = env
    r = get(client, site, "de")
    assert get(client, site, "de", **{"If-None-Match": r.headers["etag"]}).status_code == 304
    r304 = get(client, site, "de", **{"If-None-Match": r.headers["etag"]})
    assert r304.headers["access-control-allow-origin"] == "*"
    # Another language is another representation.
    assert get(client, site, "en", **{"If-None-Match": r.headers["etag"]}).status_code == 200
    for coding in ("gzip", "br"):
        r = get(client, site, "de", **{"Accept-Encoding": coding})
        assert r.headers["content-encoding"] == coding
        assert r.json()["lang"] == "de"  # decoded by the client
    r = get(client, site, "de", **{"Accept-Encoding": "identity"})
    assert "content-encoding" not in r.headers and orjson.loads(r.content)["lang"] == "de"


def test_cross_origin_read(env, site):
    client, _ = env
    r = get(client, site, "de", Origin="https://shop.example")
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "set-cookie" not in r.headers


def test_head(env, site):
    client, _ = env
    r = client.head(f"/t/{site}/consent.json?lang=de")
    assert r.status_code == 200 and r.content == b""


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["", "1234", "de_DE", "de-", "-de", "de--AT", "de AT",
                                  "<script>", "de;q=1", "a" * 9, "de-" + "a" * 9,
                                  "de-AT-" + "-".join(["abc"] * 10), "é", "de\x00"])
def test_malformed_lang(env, site, lang):
    client, _ = env
    r = get(client, site, lang)
    assert r.status_code == 400, lang
    assert r.headers["cache-control"] == "no-store"
    assert "lang" in r.json()["error"]


def test_unknown_and_bad_sites(env):
    client, _ = env
    for site in ("no-such-site", "Bad%20Site", "-x", "a" * 80, "%2e%2e"):
        r = client.get(f"/t/{site}/consent.json?lang=de")
        assert r.status_code == 404, site
        assert r.headers["cache-control"] == "no-store"
    assert client.post("/t/no-such-site/consent.json").status_code == 405
    assert client.get("/t/x/y/consent.json").status_code == 404


def test_other_methods(env, site):
    client, _ = env
    for method in ("POST", "PUT", "DELETE"):
        assert client.request(method, f"/t/{site}/consent.json").status_code == 405


def test_does_not_shadow_the_tag_routes(env, site):
    client, _ = env
    assert client.get(f"/t/{site}.js").status_code in (200, 503)  # 503: no built bundle
    assert client.get(f"/t/{site}.js").status_code != 404


# -- the parts --------------------------------------------------------------------------------


def test_accept_language_parsing():
    assert accept_language("de-DE,de;q=0.9,en;q=0.8") == ["de-DE", "de", "en"]
    assert accept_language("en;q=0.1, fr, de;q=0.5") == ["fr", "de", "en"]
    assert accept_language("de;q=0, *;q=0.5, fr;Q=0.3") == ["fr"]
    assert accept_language("") == []
    assert accept_language("x" * 2000) == []
    assert accept_language("de;q=x, en") == ["en"]


def test_negotiate():
    langs = ["en", "de", "de-AT", "pt-BR"]
    assert negotiate("de-AT", "", langs) == "de-AT"
    assert negotiate("de-CH", "", langs) == "de"
    assert negotiate("pt", "", langs) == "pt-BR"  # a variant of the same language
    assert negotiate("pt-PT", "", langs) == "pt-BR"
    assert negotiate(None, "ja, pt;q=0.5", langs) == "pt-BR"
    assert negotiate("ja", "zh", langs) == "en"
    assert negotiate("ja", "", ["de", "fr"]) == "de"  # no English: the first there is


def test_texts_for_fills_gaps():
    consent = {"purposes": [{"id": "necessary", "required": True}, {"id": "extra"}],
               "texts": {"en": {"title": "T", "purposes": {"necessary": {
                   "name": "N", "description": "D"}}},
                         "de": {"title": "", "body": "B"}}}
    out = texts_for(consent, "de")
    assert out["title"] == "T" and out["body"] == "B" and out["save"] == ""
    assert out["purposes"] == [
        {"id": "necessary", "required": True, "name": "N", "description": "D"},
        {"id": "extra", "required": False, "name": "extra", "description": ""}]
    assert texts_for(consent, "ja")["gpc"] == GPC_NOTES["en"]
