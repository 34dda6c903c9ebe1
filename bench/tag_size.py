"""Size of the browser tag: what a shop's page downloads.

Prints raw, gzip -9 and (when the ``brotli`` module is importable) brotli sizes of the demo
shop's tag as ``/t/demo.js`` serves it (the core build the collector picks for the demo
container, ``core_bundle``, with its compact config, built here with the collector's own
``core_config``: the number the 3,000 B budget is about); of ``dist/tag.js`` (the core with
every feature) alone; of the sample container of DESIGN.md section 1 the same way; of the
tag-manager engine (``/t/{site}/tm.js``, loaded only when a purpose some tag needs is
granted, or for timers and visibility triggers) for both; of ``decide.js`` (consent
decisions: the banner's, a CMP's); of the banner (``banner.js`` + ``banner.css``) and the
debug overlay; the limits of ``js_snippet/size-budget.json``; and the ratio to peers, by
their published gzip sizes (1 KB = 1000 bytes).

Run: ``python3 bench/tag_size.py`` (after ``npm run build`` in js_snippet/).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

try:
    import brotli
except ImportError:  # optional: the gzip sizes are the budget
    brotli = None

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector.containers import container_policy_hash, normalize  # noqa: E402
from collector.containers.demo import demo_container  # noqa: E402
from collector.tag.serving import core_bundle, core_config, engine_config, js_json  # noqa: E402

DIST = ROOT / "js_snippet" / "dist"
BUDGET = json.loads((ROOT / "js_snippet" / "size-budget.json").read_text())
PLACEHOLDER = b'"__TAGWERK_CONFIG__"'
VERSION = "0123456789ab"  # the assets' version hash: always 12 hex digits

TAG_PEERS = {
    "Plausible": 1_900,
    "Umami": 2_400,
    "Snowplow": 25_000,
    "Matomo Tag Manager core": 8_500,
    "GTM with GA4": 260_000,
}
BANNER_PEERS = {"cookieconsent": 15_000, "Klaro": 69_000}


def sample_document() -> dict:
    """DESIGN.md section 1's example container, keeping one third-party tag: the ads pixel."""
    return {
        "settings": {"cookie_domain": ""},
        "consent": {"purposes": [{"id": "necessary", "required": True},
                                 {"id": "analytics"}, {"id": "personalization"},
                                 {"id": "marketing"}]},
        "variables": [
            {"id": "page_path", "type": "url", "part": "path"},
            {"id": "campaign", "type": "query", "name": "utm_campaign"},
            {"id": "order_id", "type": "data_layer", "key": "ecommerce.transaction_id"},
            {"id": "ab", "type": "cookie", "name": "ab_group"},
            {"id": "hero", "type": "element_text", "selector": "h1"},
            {"id": "sku", "type": "element_attribute", "selector": "[data-sku]",
             "attribute": "data-sku"},
            {"id": "shop", "type": "constant", "value": "berlin"},
        ],
        "triggers": [
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
                             "value": "/checkout"}]},
        ],
        "tags": [
            {"name": "Ads pixel", "id": "ads", "type": "pixel", "purpose": "marketing",
             "url": "https://ads.example/p?o={{order_id}}", "triggers": ["bought"]},
        ],
    }


def served(site: str, document: dict) -> tuple[bytes, bytes]:
    """``/t/{site}.js`` and ``/t/{site}/tm.js`` for a container document, as the collector
    builds them (collector/tag/serving.py)."""
    doc = normalize(document)
    core = core_config(site, doc, container_policy_hash(document), VERSION)
    tag = (DIST / core_bundle(doc)).read_bytes().replace(PLACEHOLDER, js_json(core), 1)
    engine = (DIST / "engine.js").read_bytes().replace(PLACEHOLDER, js_json(engine_config(doc)), 1)
    return tag, engine


def sizes(*files: bytes) -> tuple[int, int, int | None]:
    """Raw, gzip -9 -n and brotli (quality 11) bytes, summed over files served separately."""
    gz = sum(len(gzip.compress(f, compresslevel=9, mtime=0)) for f in files)
    br = sum(len(brotli.compress(f, quality=11)) for f in files) if brotli else None
    return sum(map(len, files)), gz, br


def ratios(size: int, peers: dict[str, int]) -> str:
    return ", ".join(f"{name} {kb / 1000:g} KB: {size / kb:.2f}x" for name, kb in peers.items())


def main() -> int:
    tag_path = DIST / "tag.js"
    if not tag_path.exists():
        print("js_snippet/dist/tag.js is not built: run `npm run build` in js_snippet/")
        return 1
    tag = tag_path.read_bytes()
    demo, demo_engine = served("demo", demo_container())
    sample, sample_engine = served("demo", sample_document())
    decide = (DIST / "decide.js").read_bytes()
    rows: list[tuple[str, list[bytes], int | None, dict[str, int]]] = [
        ("/t/demo.js as served (demo container)", [demo], BUDGET["tag_with_container_gzip"],
         TAG_PEERS),
        ("  + /t/demo/tm.js (engine, when needed)", [demo, demo_engine], None, TAG_PEERS),
        ("  + /t/decide.js (a decision, a CMP)", [demo, decide], None, {}),
        ("dist/tag.js (every feature, no config)", [tag], BUDGET["tag_gzip_ceiling"], TAG_PEERS),
        ("tag + DESIGN.md sample container", [sample], None, {}),
        ("  + its engine", [sample, sample_engine], None, {}),
        ("dist/decide.js (consent decisions)", [decide], BUDGET["decide_gzip_ceiling"], {}),
    ]
    if (DIST / "banner.js").exists():
        banner = [p.read_bytes() for p in (DIST / "banner.js", DIST / "banner.css") if p.exists()]
        rows.append(("dist/banner.js + banner.css", banner, BUDGET["banner_with_css_gzip"],
                     BANNER_PEERS))
    debug = [p.read_bytes() for p in (DIST / "debug.js", DIST / "debug.css") if p.exists()]
    if debug:
        rows.append(("dist/debug.js + debug.css (debug only)", debug, None, {}))

    print(f"{'file':42} {'raw':>7} {'gzip -9':>8} {'brotli':>7} {'limit':>7}  status")
    over = 0
    for name, files, limit, _ in rows:
        raw, gz, br = sizes(*files)
        status = "" if limit is None else ("ok" if gz <= limit else f"OVER by {gz - limit} B")
        over += bool(limit is not None and gz > limit)
        print(f"{name:42} {raw:7} {gz:8} {br if br is not None else '-':>7} "
              f"{limit if limit is not None else '-':>7}  {status}")
    if brotli is None:
        print("(brotli: module not importable, sizes skipped)")
    if not (DIST / "banner.js").exists():
        print("(banner: js_snippet/src/banner.js not written yet)")
    print()
    print("ratio of our gzip size to peers' published gzip sizes (lower is smaller):")
    for name, files, _, peers in rows:
        if peers:
            print(f"  {name}: {ratios(sizes(*files)[1], peers)}")
    print(f"\n/t/demo.js is dist/{core_bundle(normalize(demo_container()))}; a first visit "
          "loads decide.js and the banner too, a returning visitor neither")
    if over:
        print(f"\n{over} over its limit (tests/test_js.py enforces the budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
