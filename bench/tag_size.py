"""Size of the browser tag: what a shop's page downloads.

Prints raw, gzip -9 and (when the ``brotli`` module is importable) brotli sizes of
``js_snippet/dist/tag.js``; of the tag with a sample container inlined (DESIGN.md section 1's
example as the collector serves it, section 2, without third-party tags except one pixel);
of the banner (``banner.js`` + ``banner.css``) and the debug overlay when they are built; the
limits of ``js_snippet/size-budget.json``; and the ratio to peers, by their published gzip
sizes (1 KB = 1000 bytes).

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
DIST = ROOT / "js_snippet" / "dist"
BUDGET = json.loads((ROOT / "js_snippet" / "size-budget.json").read_text())
PLACEHOLDER = b'"__TAGWERK_CONFIG__"'

TAG_PEERS = {
    "Plausible": 1_900,
    "Umami": 2_400,
    "Snowplow": 25_000,
    "Matomo Tag Manager core": 8_500,
    "GTM with GA4": 260_000,
}
BANNER_PEERS = {"cookieconsent": 15_000, "Klaro": 69_000}


def sample_config() -> dict:
    """DESIGN.md section 1's example container as the collector inlines it (section 2, with
    the defaults filled in), keeping one third-party tag: the ads pixel."""
    base = "https://collect.shop.example"
    return {
        "site": "demo",
        "endpoint": f"{base}/collect",
        "version": 7,
        "policy": "3c1d0e7a9b2f4c11",
        "settings": {
            "endpoint": "/collect",
            "tag_path": "/t/demo.js",
            "cookie_domain": "",
            "session_timeout_minutes": 30,
            "auto": {"page_views": True, "spa": True, "clicks": False, "outbound_links": True,
                     "downloads": True, "scroll_depth": True, "forms": True,
                     "ecommerce": True},
            "download_extensions": ["pdf", "zip", "csv", "xlsx", "docx", "mp3", "mp4", "dmg",
                                    "exe"],
            "scroll_thresholds": [25, 50, 75, 90],
        },
        "consent": {
            "purposes": [
                {"id": "necessary", "required": True, "default": False},
                {"id": "analytics", "required": False, "default": False},
                {"id": "personalization", "required": False, "default": False},
                {"id": "marketing", "required": False, "default": False},
            ],
            "lifetime_days": 365,
            "rejection_lifetime_days": 182,
        },
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
             "url": "https://ads.example/p?o={{order_id}}", "triggers": ["bought"],
             "blocking_triggers": []},
        ],
        "assets": {
            "banner": f"{base}/t/banner.js?v=0123456789ab",
            "banner_css": f"{base}/t/banner.css?v=0123456789ab",
            "debug": f"{base}/t/debug.js?v=0123456789ab",
            "texts": f"{base}/t/demo.texts.json?v=0123456789ab",
        },
    }


def normalized(config: dict) -> dict:
    """As collector/containers.py serves it: every trigger has its conditions."""
    triggers = [{**t, "conditions": t.get("conditions", [])} for t in config["triggers"]]
    return {**config, "triggers": triggers}


def inline(tag: bytes, config: dict) -> bytes:
    """What ``/t/{site}.js`` serves: the placeholder replaced by compact JSON."""
    text = json.dumps(config, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    return tag.replace(PLACEHOLDER, text.encode(), 1)


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
    rows: list[tuple[str, list[bytes], int | None, dict[str, int]]] = [
        ("dist/tag.js (no container)", [tag], BUDGET["tag_gzip"], TAG_PEERS),
        ("dist/tag.js + sample container", [inline(tag, normalized(sample_config()))],
         BUDGET["tag_with_container_gzip"], TAG_PEERS),
    ]
    if (DIST / "banner.js").exists():
        banner = [p.read_bytes() for p in (DIST / "banner.js", DIST / "banner.css") if p.exists()]
        rows.append(("dist/banner.js + banner.css", banner, BUDGET["banner_with_css_gzip"],
                     BANNER_PEERS))
    debug = [p.read_bytes() for p in (DIST / "debug.js", DIST / "debug.css") if p.exists()]
    if debug:
        rows.append(("dist/debug.js + debug.css (debug only)", debug, None, {}))

    print(f"{'file':40} {'raw':>7} {'gzip -9':>8} {'brotli':>7} {'limit':>7}  status")
    over = 0
    for name, files, limit, _ in rows:
        raw, gz, br = sizes(*files)
        status = "" if limit is None else ("ok" if gz <= limit else f"OVER by {gz - limit} B")
        over += bool(limit is not None and gz > limit)
        print(f"{name:40} {raw:7} {gz:8} {br if br is not None else '-':>7} "
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
    if over:
        print(f"\n{over} over its limit (tests/test_js.py enforces the budget of tag.js)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
