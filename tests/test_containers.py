"""The container document (js_snippet/DESIGN.md section 1): validation, defaults, policy hash."""

from __future__ import annotations

import copy
import re

import orjson
import pytest

from collector.containers import (
    ContainerError,
    check,
    container_policy_hash,
    default_container,
    normalize,
    resolved_tag_path,
    validate,
)
from collector.containers.store import Containers
from collector.routes import taken

ORIGINS = ("https://shop.example", "https://*.cdn.shop.example")


def full() -> dict:
    """The example of DESIGN.md, complete."""
    doc = default_container()
    doc["settings"]["cookie_domain"] = ".shop.example"
    doc["variables"] = [
        {"id": "page_path", "type": "url", "part": "path"},
        {"id": "campaign", "type": "query", "name": "utm_campaign"},
        {"id": "order_id", "type": "data_layer", "key": "ecommerce.transaction_id"},
        {"id": "ab", "type": "cookie", "name": "ab_group"},
        {"id": "hero", "type": "element_text", "selector": "h1"},
        {"id": "sku", "type": "element_attribute", "selector": "[data-sku]",
         "attribute": "data-sku"},
        {"id": "shop", "type": "constant", "value": "berlin"},
    ]
    doc["triggers"] = [
        {"id": "all_pages", "type": "page_view"},
        {"id": "route", "type": "history_change"},
        {"id": "buy_click", "type": "click", "selector": ".buy"},
        {"id": "links", "type": "link_click", "selector": "a.track"},
        {"id": "out", "type": "outbound_link"},
        {"id": "dl", "type": "file_download"},
        {"id": "newsletter", "type": "form_submit", "selector": "form#newsletter"},
        {"id": "half", "type": "scroll_depth", "percent": 50},
        {"id": "t30", "type": "timer", "interval_ms": 30000, "limit": 1},
        {"id": "hero_seen", "type": "element_visible", "selector": "#hero", "ratio": 0.5},
        {"id": "bought", "type": "custom_event", "event": "purchase",
         "conditions": [{"variable": "page_path", "operator": "starts_with",
                         "value": "/checkout"},
                        {"variable": "order_id", "operator": "matches", "value": "^[0-9]+$"},
                        {"variable": "shop", "operator": "greater_than", "value": 3}]},
    ]
    doc["tags"] = [
        {"id": "ads", "name": "Ads pixel", "type": "pixel", "purpose": "marketing",
         "url": "https://ads.example/p?o={{order_id}}&c={{campaign}}", "triggers": ["bought"],
         "blocking_triggers": []},
        {"id": "chat", "name": "Chat widget", "type": "script", "purpose": "personalization",
         "src": "https://chat.example/w.js", "triggers": ["all_pages"]},
        {"id": "survey", "name": "Survey", "type": "html", "purpose": "analytics",
         "html": "<div id=survey></div>", "triggers": ["t30"], "blocking_triggers": ["out"]},
        {"id": "own", "type": "script", "purpose": "necessary",
         "src": "https://static.cdn.shop.example/app.js", "triggers": ["all_pages"]},
        {"id": "own-path", "type": "pixel", "purpose": "necessary", "url": "/ping?p={{page_path}}",
         "triggers": ["all_pages"]},
        {"id": "local", "type": "script", "purpose": "analytics",
         "src": "http://localhost:3000/dev.js", "triggers": ["route"]},
    ]
    return doc


def errors(doc, origins=ORIGINS, site_id=None) -> list[str]:
    """The problems validation finds with the route table, as the collector checks."""
    return [str(e) for e in validate(doc, origins, taken=taken, site_id=site_id)]


def test_the_design_example_and_the_default_are_valid():
    assert errors(full()) == []
    assert errors(default_container(), ()) == []
    check(full(), ORIGINS)


def test_default_container():
    doc = default_container()
    assert [p["id"] for p in doc["consent"]["purposes"]] == [
        "necessary", "analytics", "personalization", "marketing"]
    assert doc["consent"]["purposes"][0]["required"] is True
    assert not any(p.get("default") for p in doc["consent"]["purposes"])
    assert doc["tags"] == []  # no third-party tags
    assert doc["settings"]["auto"]["page_views"] and doc["settings"]["auto"]["ecommerce"]
    for lang in ("en", "de"):
        texts = doc["consent"]["texts"][lang]
        assert set(texts["purposes"]) == {"necessary", "analytics", "personalization",
                                          "marketing"}
        # Rejecting is offered as plainly as accepting.
        assert len(texts["reject_all"].split()) == len(texts["accept_all"].split())
    assert doc["consent"]["texts"]["de"]["reject_all"] == "Alle ablehnen"
    assert "widerrufen" in doc["consent"]["texts"]["de"]["body"]
    assert "withdraw" in doc["consent"]["texts"]["en"]["body"]
    # Each call is a fresh copy.
    doc["tags"].append(1)
    assert default_container()["tags"] == []


def _set(path: str, value):
    """A mutation that sets ``a.b[2].c`` (or deletes it when value is DELETE)."""

    def apply(doc):
        parts = path.replace("[", ".[").split(".")
        target = doc
        for part in parts[:-1]:
            target = target[int(part[1:-1])] if part.startswith("[") else target[part]
        last = parts[-1]
        key = int(last[1:-1]) if last.startswith("[") else last
        if value is DELETE:
            del target[key]
        else:
            target[key] = value

    return apply


DELETE = object()

BAD = [
    # top level
    (lambda d: d.update(trigers=[]), "trigers: unknown key (did you mean 'triggers'?)"),
    (lambda d: d.pop("consent"), "consent: is required"),
    (_set("tags", {}), "tags: must be a list, not an object"),
    # settings
    (_set("settings.endpiont", "/c"), "settings.endpiont: unknown key (did you mean 'endpoint'?)"),
    (_set("settings.endpoint", "http://collect.shop.example/c"),
     "settings.endpoint: must be https (http only for localhost and 127.0.0.1)"),
    (_set("settings.endpoint", "ftp://x/y"), "settings.endpoint: must be an https URL"),
    (_set("settings.endpoint", "//evil.example/c"), "settings.endpoint: must be an https URL"),
    (_set("settings.tag_path", "/t/x.js"), "settings.tag_path: '/t/x.js' is reserved"),
    (_set("settings.tag_path", "/api/v1/x.js"), "settings.tag_path: '/api/v1/x.js' is reserved"),
    (_set("settings.tag_path", "/a/{shop}.js"), "settings.tag_path: the only placeholder"),
    (_set("settings.tag_path", "/a/../b.js"), "settings.tag_path: must not contain empty"),
    (_set("settings.tag_path", "/a/b.css"), "settings.tag_path: '/a/b.css' is not a path"),
    (_set("settings.cookie_domain", "shop example"),
     "settings.cookie_domain: 'shop example' is not a domain"),
    (_set("settings.session_timeout_minutes", 0),
     "settings.session_timeout_minutes: must be between 1 and 1440 (got 0)"),
    (_set("settings.session_timeout_minutes", 30.5),
     "settings.session_timeout_minutes: must be an integer, not a number"),
    (_set("settings.session_timeout_minutes", True),
     "settings.session_timeout_minutes: must be an integer, not a boolean"),
    (_set("settings.auto.page_views", "yes"),
     "settings.auto.page_views: must be true or false, not a string"),
    (_set("settings.auto.pageviews", True),
     "settings.auto.pageviews: unknown key (did you mean 'page_views'?)"),
    (_set("settings.download_extensions[1]", ".zip"),
     "settings.download_extensions[1]: '.zip' is not a file extension"),
    (_set("settings.scroll_thresholds[3]", 101),
     "settings.scroll_thresholds[3]: must be between 1 and 100 (got 101)"),
    (_set("settings.scroll_thresholds[3]", 25),
     "settings.scroll_thresholds[3]: 25 is listed twice"),
    # consent
    (_set("consent.purposes", []), "consent.purposes: must not be empty"),
    (_set("consent.purposes[1].id", "Analytics"),
     "consent.purposes[1].id: 'Analytics' is not a purpose id"),
    (_set("consent.purposes[2].id", "analytics"),
     "consent.purposes[2].id: duplicate id 'analytics' (also consent.purposes[1])"),
    # The tag looks a purpose up in a plain object: one named after a property every
    # object inherits would be granted without consent (probe 41: "constructor").
    # (The other names of Object.prototype have capitals or a leading '_': no purpose id.)
    (_set("consent.purposes[3].id", "constructor"), "consent.purposes[3].id: 'constructor' is "
     "the name of a property every JavaScript object has"),
    (_set("consent.purposes[1].required", True),
     "consent.purposes[1].required: only 'necessary' may be required"),
    (_set("consent.purposes[0].required", False),
     "consent.purposes[0].required: the purpose 'necessary' must be required: true"),
    (_set("consent.purposes[1].default", "no"),
     "consent.purposes[1].default: must be true or false, not a string"),
    (_set("consent.purposes[1].optional", True),
     "consent.purposes[1].optional: unknown key"),
    (lambda d: d["consent"]["purposes"].pop(0),
     "consent.purposes: the purpose 'necessary' (required: true) is missing"),
    (_set("consent.lifetime_days", 0), "consent.lifetime_days: must be between 1 and 3650 (got 0)"),
    (_set("consent.lifetime_days", 3651), "consent.lifetime_days: must be between 1 and 3650"),
    (_set("consent.rejection_lifetime_days", 400),
     "consent.rejection_lifetime_days: a rejection must not be kept longer than a consent"),
    (_set("consent.policy_version", 2), "consent.policy_version: must be a string, not a number"),
    (_set("consent.texts.en", DELETE), "consent.texts.en: is required"),
    (_set("consent.texts.english", {}), "consent.texts.english: not a language code"),
    (_set("consent.texts.de.title", DELETE), "consent.texts.de.title: is required"),
    (_set("consent.texts.en.save", ""), "consent.texts.en.save: must not be empty"),
    (_set("consent.texts.en.title", "x" * 201),
     "consent.texts.en.title: at most 200 characters (got 201)"),
    (_set("consent.texts.en.title", "a\x00b"),
     "consent.texts.en.title: must not contain control characters"),
    (_set("consent.texts.en.button", "OK"), "consent.texts.en.button: unknown key"),
    (_set("consent.texts.de.purposes.marketing", DELETE),
     "consent.texts.de.purposes.marketing: is required"),
    (_set("consent.texts.de.purposes.ads", {"name": "A", "description": "B"}),
     "consent.texts.de.purposes.ads: unknown key"),
    (_set("consent.texts.en.purposes.analytics.description", DELETE),
     "consent.texts.en.purposes.analytics.description: is required"),
    # variables
    (_set("variables[1].id", "Campaign"), "variables[1].id: 'Campaign' is not an id"),
    (_set("variables[1].id", "page_path"),
     "variables[1].id: duplicate id 'page_path' (also variables[0])"),
    (_set("variables[1].id", "x" * 65), "variables[1].id: at most 64 characters (got 65)"),
    (_set("variables[0].type", "js"), "variables[0].type: must be one of url, query"),
    (_set("variables[0].part", "port"), "variables[0].part: must be one of href, host, path"),
    (_set("variables[1].name", DELETE), "variables[1].name: is required"),
    (_set("variables[2].key", "a..b"), "variables[2].key: 'a..b' is not a data layer key"),
    (_set("variables[3].name", "a b"), "variables[3].name: 'a b' is not a cookie name"),
    (_set("variables[5].attribute", "1x"), "variables[5].attribute: '1x' is not an attribute"),
    (_set("variables[6].value", 5), "variables[6].value: must be a string, not a number"),
    (_set("variables[6].code", "alert(1)"), "variables[6].code: unknown key"),
    (_set("variables[0]", "page_path"), "variables[0]: must be an object, not a string"),
    # triggers
    (_set("triggers[0].type", "pageview"), "triggers[0].type: must be one of page_view, "),
    (_set("triggers[7].percent", 0), "triggers[7].percent: must be between 1 and 100 (got 0)"),
    (_set("triggers[8].interval_ms", 10), "triggers[8].interval_ms: must be between 1000"),
    (_set("triggers[9].ratio", 2), "triggers[9].ratio: must be between 0 and 1 (got 2)"),
    (_set("triggers[9].selector", DELETE), "triggers[9].selector: is required"),
    (_set("triggers[10].event", DELETE), "triggers[10].event: is required"),
    (_set("triggers[0].selector", "a"), "triggers[0].selector: unknown key"),
    (_set("triggers[1].id", "all_pages"),
     "triggers[1].id: duplicate id 'all_pages' (also triggers[0])"),
    (_set("triggers[10].conditions[0].variable", "path"),
     "triggers[10].conditions[0].variable: unknown variable 'path'"),
    (_set("triggers[10].conditions[0].operator", "startswith"),
     "triggers[10].conditions[0].operator: must be one of equals"),
    (_set("triggers[10].conditions[1].value", "(unclosed"),
     "triggers[10].conditions[1].value: not a valid regular expression"),
    (_set("triggers[10].conditions[1].value", "a" * 201),
     "triggers[10].conditions[1].value: at most 200 characters (got 201)"),
    (_set("triggers[10].conditions[2].value", "3"),
     "triggers[10].conditions[2].value: must be a number, not a string"),
    (_set("triggers[10].conditions[0].value", DELETE),
     "triggers[10].conditions[0].value: is required"),
    (_set("triggers[10].conditions", {}),
     "triggers[10].conditions: must be a list, not an object"),
    # tags
    (_set("tags[0].purpose", "ads"),
     "tags[0].purpose: unknown purpose 'ads' (the container's purposes: necessary, analytics"),
    (_set("tags[1].purpose", DELETE),
     "tags[1].purpose: is required: a tag without a purpose would run without consent"),
    (_set("tags[0].type", "iframe"), "tags[0].type: must be one of pixel, script, html"),
    (_set("tags[0].triggers", []), "tags[0].triggers: must not be empty"),
    (_set("tags[0].triggers[0]", "sold"), "tags[0].triggers[0]: unknown trigger 'sold'"),
    (_set("tags[2].blocking_triggers[0]", "nope"),
     "tags[2].blocking_triggers[0]: unknown trigger 'nope'"),
    (_set("tags[0].url", "https://ads.example/p?o={{order}}"),
     "tags[0].url: unknown variable 'order' in {{order}}"),
    (_set("tags[0].url", "https://ads.example/p?o={{order_id}"), "tags[0].url: unbalanced"),
    (_set("tags[0].url", "https://{{shop}}.example/p"),
     "tags[0].url: variables are allowed only in the path and query"),
    # A variable that is the host, or ends it, lets the page's URL choose where a script
    # loads from (probe 41: ?h=attacker.example).
    (_set("tags[1].src", "https://{{campaign}}/x.js"),
     "tags[1].src: variables are allowed only in the path and query"),
    (_set("tags[1].src", "https://chat.example{{campaign}}/x.js"),
     "tags[1].src: variables are allowed only in the path and query"),
    (_set("tags[0].url", "https://ads.example:{{campaign}}/p"),
     "tags[0].url: variables are allowed only in the path and query"),
    (_set("tags[0].url", "https://ads.example{{campaign}}"),
     "tags[0].url: variables are allowed only in the path and query"),
    (_set("tags[0].url", "https://ads.example/{{campaign}}/p?c={{campaign}}#{{campaign}}"), None),
    # urlsplit's own refusals were a 500 (re-probe 45).
    (_set("tags[1].src", "https://chat.example\uff20evil.com/"), "tags[1].src: is not a valid URL"),
    (_set("tags[0].url", "https://ads.example\uff0fevil.com/p"), "tags[0].url: is not a valid URL"),
    (_set("tags[0].url", "https://[::1/p"), "tags[0].url: is not a valid URL"),
    (_set("tags[0].url", "http://ads.example/p"), "tags[0].url: must be https"),
    (_set("tags[0].url", "javascript:alert(1)"), "tags[0].url: must be an https URL"),
    (_set("tags[0].url", "https://user:pw@ads.example/p"),
     "tags[0].url: must not contain a user name or password"),
    (_set("tags[0].url", "https://ads.example/a b"), "tags[0].url: must not contain spaces"),
    (_set("tags[1].src", "https://x.example/" + "a" * 2048), "tags[1].src: at most 2048"),
    (_set("tags[1].url", "https://chat.example/w.js"), "tags[1].url: unknown key"),
    (_set("tags[1].src", DELETE), "tags[1].src: is required"),
    (_set("tags[2].html", 3), "tags[2].html: must be a string, not a number"),
    (_set("tags[1].purpose", "necessary"), "tags[1].purpose: 'necessary' is only for tags of "
     "the site itself: 'https://chat.example/w.js' is not on the site's origins"),
    # An html tag's markup and scripts can load anything from anywhere (userinfo cut by a
    # quote, tabs inside '//', CSS escapes, script code: probes 41 and 43): no scan of it can
    # be complete, so a tag that runs without consent is a script or a pixel, whose one URL
    # is checked, never html.
    *[(lambda d, html=html: d["tags"][2].update(purpose="necessary", html=html),
       "tags[2].purpose: an html tag can load anything") for html in (
        "<b>no URL at all</b>",
        '<img src="/pixel.gif">',
        '<script src="https://shop-a.example\'@evil.example/x.js"></script>',
        '<img src="/&#9;/evil.example/x.js">',
        "<div style=\"background:url('\\2f\\2f evil.example/a.png')\"></div>",
        "<script>new Image().src = '//' + 'evil.example/p'</script>")],
    (_set("tags[3].id", "ads"), "tags[3].id: duplicate id 'ads' (also tags[0])"),
    # The tag looks ids up in plain objects too (probe 43: a trigger 'constructor' fired on
    # every signal, a tag 'constructor' was never inserted).
    (_set("tags[3].id", "constructor"), "tags[3].id: 'constructor' is the name of a property "
     "every JavaScript object has"),
    (_set("triggers[0].id", "constructor"), "triggers[0].id: 'constructor' is the name"),
    (_set("variables[0].id", "constructor"), "variables[0].id: 'constructor' is the name"),
    (_set("tags[0].enabled", False), "tags[0].enabled: unknown key"),
]


@pytest.mark.parametrize(("mutate", "expected"), BAD)
def test_bad_documents(mutate, expected):
    doc = full()
    mutate(doc)
    found = errors(doc)
    if expected is None:
        assert found == []
        return
    assert found, "accepted"
    assert found[0].startswith(expected), found
    with pytest.raises(ContainerError) as raised:
        check(doc, ORIGINS, taken=taken)
    assert raised.value.field == found[0].split(":")[0]
    assert str(raised.value).splitlines()[0] == found[0]


def test_every_problem_is_reported_in_document_order():
    doc = full()
    doc["settings"]["auto"]["spa"] = 1
    doc["consent"]["lifetime_days"] = -1
    doc["tags"][0]["purpose"] = "ads"
    doc["tags"][1]["triggers"] = ["nope"]
    assert [e.field for e in validate(doc, ORIGINS)] == [
        "settings.auto.spa", "consent.lifetime_days", "tags[0].purpose", "tags[1].triggers[0]"]


@pytest.mark.parametrize(("doc", "expected"), [
    ([], "must be an object, not a list"),
    ("x", "must be an object, not a string"),
    (None, "must be an object, not null"),
    ({"consent": "x" * (256 * 1024)}, "the container is 262158 bytes; at most 262144"),
])
def test_not_a_container(doc, expected):
    assert errors(doc) == [expected]


def test_limits_on_list_sizes():
    doc = full()
    doc["variables"] = [{"id": f"v{i}", "type": "constant", "value": ""} for i in range(201)]
    assert errors(doc)[0] == "variables: at most 200 entries (got 201)"
    doc = full()
    doc["triggers"] = [{"id": f"t{i}", "type": "page_view"} for i in range(200)]
    doc["tags"] = [{"id": f"g{i}", "type": "pixel", "purpose": "analytics",
                    "url": f"https://a.example/{i}", "triggers": [f"t{i}"]} for i in range(200)]
    assert errors(doc) == []


def test_necessary_tags_need_the_site_origins():
    doc = full()
    assert [e.field for e in validate(doc, ())] == ["tags[3].purpose"]  # own-path still fine
    assert errors(doc, ("*",))  # "any origin" does not make a third party the site itself


@pytest.mark.parametrize("url", [
    "/\\evil.example/x.js",          # a browser reads /\ as //
    "/\\/evil.example/x.js",
    "/a\\b.js",                        # no backslash anywhere
    "/{{empty}}/evil.example/x.js",   # an empty variable makes it //evil.example
    "/{{empty}}{{empty}}/evil.example/x.js",
])
def test_a_path_that_a_browser_reads_as_another_host_is_refused(url):
    """Found by an attacker's probe: a necessary tag could load any host's script for a
    visitor without consent, as a "path on the site itself"."""
    for key, kind in (("src", "script"), ("url", "pixel")):
        doc = full()
        doc["variables"].append({"id": "empty", "type": "constant", "value": ""})
        doc["tags"] = [{"id": "t", "type": kind, "purpose": "necessary", key: url,
                        "triggers": ["all_pages"]}]
        problems = validate(doc, ORIGINS)
        assert [e.field for e in problems] == [f"tags[0].{key}"], problems


def test_a_key_s_control_characters_are_escaped_in_errors():
    """A terminal escape in a container file's key reached `tagwerk container push`'s output
    raw (found by an attacker's probe)."""
    doc = full()
    doc["settings"]["\x1b[31mRED\x1b[0m"] = 1
    assert [e.field for e in validate(doc, ORIGINS)] == ["settings.\\u001b[31mRED\\u001b[0m"]


def test_minimal_document_gets_defaults():
    doc = {"consent": {"purposes": [{"id": "necessary", "required": True}],
                       "texts": {"en": {"title": "t", "body": "b", "accept_all": "a",
                                        "reject_all": "r", "settings": "s", "save": "v",
                                        "purposes": {"necessary": {"name": "n",
                                                                   "description": "d"}}}}}}
    assert errors(doc) == []
    norm = normalize(doc)
    assert norm["settings"]["endpoint"] == "/collect"
    assert norm["settings"]["auto"]["clicks"] is False
    assert norm["consent"]["lifetime_days"] == 365
    assert norm["consent"]["purposes"] == [{"id": "necessary", "required": True,
                                            "default": False}]
    assert norm["tags"] == [] and norm["triggers"] == [] and norm["variables"] == []
    assert container_policy_hash(doc) == container_policy_hash(
        {**doc, "consent": {**doc["consent"], "policy_version": "1"}})


def test_policy_hash_follows_purposes_and_tags_not_texts():
    base = container_policy_hash(full())
    assert len(base) == 16 and int(base, 16) >= 0

    def changed(mutate) -> bool:
        doc = copy.deepcopy(full())
        mutate(doc)
        assert errors(doc) == []
        return container_policy_hash(doc) != base

    assert changed(lambda d: d["tags"][0].update(purpose="analytics"))
    assert changed(lambda d: d["tags"].pop())
    assert changed(lambda d: d["tags"][0].update(id="ads2"))
    assert changed(lambda d: d["consent"].update(policy_version="2"))
    assert changed(lambda d: (d["consent"]["purposes"].pop(),
                              d["tags"].pop(0),
                              [t["purposes"].pop("marketing")
                               for t in d["consent"]["texts"].values()]))
    assert not changed(lambda d: d["consent"]["texts"]["en"].update(title="Cookies?"))
    assert not changed(lambda d: d["tags"][0].update(url="https://ads.example/q"))
    assert not changed(lambda d: d["settings"].update(session_timeout_minutes=10))
    assert not changed(lambda d: d["tags"].reverse())
    # the tag trusts a decision while its cookie lives: a new lifetime asks again
    assert changed(lambda d: d["consent"].update(lifetime_days=300))
    assert changed(lambda d: d["consent"].update(rejection_lifetime_days=30))
    assert not changed(lambda d: d["consent"].update(lifetime_days=365))


def test_tag_path_resolution():
    doc = full()
    assert resolved_tag_path(doc, "shop") == ""
    doc["settings"]["tag_path"] = "/js/{site}-app.js"
    assert errors(doc) == []
    assert resolved_tag_path(doc, "shop") == "/js/shop-app.js"
    doc["settings"]["tag_path"] = "/t/shop.js"  # a site's default path is reserved
    assert errors(doc)[0].startswith("settings.tag_path:")


@pytest.mark.parametrize(("tag_path", "route"), [
    ("/t/shop/tm.js", "GET, HEAD /t/{site}/tm.js"),
    ("/t/{site}/tm.js", "GET, HEAD /t/{site}/tm.js"),
    ("/demo/x.js", "GET, HEAD /demo/{path:path}"),
    ("/demo/{site}.js", "GET, HEAD /demo/{path:path}"),
    ("/t/x.css", "GET, HEAD /t/{name}.css"),
    ("/t/preview", "GET, HEAD /t/preview"),
    ("/demo", "GET, HEAD /demo"),
    ("/collect", "OPTIONS, POST /collect"),
])
def test_a_tag_path_a_route_answers_is_refused(tag_path, route):
    """Whatever the method or the path's shape: the route table is asked first, and its
    answer names the route."""
    doc = full()
    doc["settings"]["tag_path"] = tag_path
    assert errors(doc) == [
        f"settings.tag_path: {tag_path!r} is reserved: the collector's route {route} answers it"]
    assert errors(doc, site_id="shop")[0].startswith(f"settings.tag_path: {tag_path!r}")


def test_a_tag_path_is_checked_as_the_site_resolves_it():
    doc = full()
    doc["settings"]["tag_path"] = "/{site}/shop/tm.js"
    assert errors(doc) == errors(doc, site_id="shop") == []
    assert errors(doc, site_id="t") == [
        "settings.tag_path: '/{site}/shop/tm.js' ('/t/shop/tm.js' for this site) is reserved: "
        "the collector's route GET, HEAD /t/{site}/tm.js answers it"]
    doc["settings"]["tag_path"] = "/t/shop.js"  # the site's default path, spelled out
    assert errors(doc, site_id="shop") == []
    assert errors(doc, site_id="other")[0].startswith("settings.tag_path: '/t/shop.js' is ")
    for legitimate in ("/assets/shop-tag.js", "/assets/{site}-tag.js", "/t/shop/app.js"):
        doc["settings"]["tag_path"] = legitimate
        assert errors(doc) == errors(doc, site_id="t") == [], legitimate
    # Without the route table, validation checks the document alone.
    doc["settings"]["tag_path"] = "/demo/x.js"
    assert validate(doc, ORIGINS) == []


def test_the_store_checks_the_path_of_the_site(store):
    """Containers asks the route table for the path as the site resolves it, on save and
    on publish (a draft saved without the check, as before it existed, is not published)."""
    doc = full()
    doc["settings"]["tag_path"] = "/{site}/shop/tm.js"
    checked, unchecked = Containers(store, taken=taken), Containers(store)
    with pytest.raises(ContainerError, match="'/t/shop/tm.js' for this site"):
        checked.put_draft("t", doc, ORIGINS)
    assert checked.draft("t").updated_at is None  # nothing stored
    unchecked.put_draft("t", doc, ORIGINS)
    with pytest.raises(ContainerError, match=re.escape("GET, HEAD /t/{site}/tm.js answers")):
        checked.publish("t", origins=ORIGINS)
    assert checked.versions("t") == []
    unchecked.put_draft("t", full(), ORIGINS)  # the site's default again: its path is free


def test_documents_survive_json():
    doc = full()
    assert orjson.loads(orjson.dumps(doc)) == doc
    assert validate(orjson.loads(orjson.dumps(doc)), ORIGINS) == []
