"""The demo shop at ``/demo/``: a small single-page shop that installs the tag the way a site
owner does, so that a newcomer sees tagwerk working and the browser tests (``e2e/``) have a
realistic page to drive.

- Every ``/demo/...`` path answers the same HTML shell (the shop routes with
  ``history.pushState``; a reload or a shared link of any route works). The shell carries
  the tag's snippet (the queue stub and ``<script async src="/t/demo.js">``) and the shop's
  own script and stylesheet, all with a fresh nonce under a strict Content Security Policy:
  nothing inline runs without the nonce, and scripts inserted by a trusted script (the tag's
  banner, debug overlay and marketing tag) are trusted through ``'strict-dynamic'``.
- ``/demo/static/NAME`` serves the files of ``collector/demo_site/`` (package data): the
  shop (``app.js``, ``app.css``) and ``partner.js``/``partner.gif``, a local stand-in for an
  advertising partner's pixel that the demo container loads only with marketing consent.
- The ``demo`` site's container (the default container plus that marketing tag) is in
  ``collector/containers/demo.py``, which the service uses without this module's web
  pages.

The catalogue, cart, checkout and customer login live in ``app.js`` (the browser's
``localStorage``); the server keeps no shop state.
"""

from __future__ import annotations

import base64
import os
import re
from importlib import resources
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from collector.identity import verify
from collector.tag.serving import Asset, Dist, respond_asset
from collector.web.http import error_response

SITE = "demo"
MEDIA = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "gif": "image/gif",
}
STATIC_NAME = re.compile(r"^[a-z0-9_-]{1,64}\.(js|css|svg|gif)$")
DEMO_CUSTOMER = re.compile(r"C-[0-9A-F]{12}")  # fullmatch: the demo shop's customer ids
CSP = ("default-src 'self'; script-src 'nonce-{n}' 'strict-dynamic'; "
       "style-src 'self' 'nonce-{n}'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'")


def site_dir() -> Path:
    """The demo's static files: the ``collector/demo_site`` package data."""
    files = resources.files("collector") / "demo_site"
    if isinstance(files, Path):
        return files
    return Path(__file__).resolve().parent.parent / "demo_site"


_dist = Dist(site_dir())
_assets: dict[tuple[str, str], Asset] = {}


def _asset(name: str) -> Asset | None:
    found = _dist.read(name)
    if found is None:
        return None
    data, digest = found
    key = (name, digest)
    asset = _assets.get(key)
    if asset is None:
        if len(_assets) > 64:
            _assets.clear()
        asset = _assets[key] = Asset.build(data, MEDIA[name.rsplit(".", 1)[1]])
    return asset


def _version(name: str) -> str:
    found = _dist.read(name)
    return found[1][:12] if found else "0"


def _enabled(request: Request) -> bool:
    return bool(request.app.state.collector.settings.demo_site)


def _off() -> Response:
    return Response("The demo shop is off (tagwerk serve --no-demo).\n", 404,
                    {"Cache-Control": "no-store"}, media_type="text/plain")


SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>R\u00f6stwerk \u00b7 tagwerk demo shop</title>
<meta name="description" content="A demo shop instrumented with tagwerk.">
<link rel="icon" href="/demo/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/demo/static/app.css?v={css}" nonce="{n}">
<!-- tagwerk: the queue stub, then the tag (calls made before it loads are replayed) -->
<script nonce="{n}">window.dataLayer=window.dataLayer||[];\
window.tagwerk=window.tagwerk||function(){{(tagwerk.q=tagwerk.q||[]).push(arguments)}};</script>
<script async src="/t/demo.js" nonce="{n}"></script>
<script defer src="/demo/static/app.js?v={js}" nonce="{n}"></script>
</head>
<body>
<header class="top">
  <div class="bar wrap">
    <a class="brand" href="/demo/" data-nav>
      <svg class="logo" viewBox="0 0 32 32" aria-hidden="true"><circle cx="16" cy="16" r="15"
        fill="#3b2416"/><path d="M16 5c-6 5-6 17 0 22 6-5 6-17 0-22z" fill="#c8894b"/><path
        d="M16 6v20" stroke="#3b2416" stroke-width="1.6"/></svg>
      <span>R\u00f6stwerk</span>
    </a>
    <nav class="nav" aria-label="Categories">
      <a href="/demo/category/coffee" data-nav>Coffee</a>
      <a href="/demo/category/brewing" data-nav>Brewing</a>
      <a href="/demo/category/cups" data-nav>Cups</a>
    </nav>
    <div class="tools">
      <a class="account" href="/demo/login" data-nav id="account-link">Sign in</a>
      <a class="cart-link" href="/demo/cart" data-nav aria-label="Cart">
        <svg viewBox="0 0 24 24" aria-hidden="true"><path d="M3 4h2l2.4 11h11l2-8H7"
          fill="none" stroke="currentColor" stroke-width="1.8" stroke-linejoin="round"/>
          <circle cx="9" cy="19.5" r="1.5" fill="currentColor"/><circle cx="17" cy="19.5"
          r="1.5" fill="currentColor"/></svg>
        <span class="badge" id="cart-count">0</span>
      </a>
    </div>
  </div>
</header>
<main id="main" class="wrap" tabindex="-1">
  <noscript><p class="note">This demo shop needs JavaScript.</p></noscript>
</main>
<footer class="foot">
  <div class="wrap foot-row">
    <p>R\u00f6stwerk is a demo shop of <strong>tagwerk</strong>: nothing is sold, no payment is
      taken. Its hits go to this collector.</p>
    <p class="foot-links">
      <button type="button" class="linkish" id="cookie-settings">Cookie settings</button>
      <a href="/demo/?tagwerk_debug=1" id="debug-link">Debug view</a>
    </p>
  </div>
</footer>
</body>
</html>
"""


async def shell(request: Request) -> Response:
    """Every route of the shop: the same HTML, with a fresh nonce."""
    if not _enabled(request):
        return _off()
    nonce = base64.b64encode(os.urandom(18)).decode()
    html = SHELL.format(n=nonce, css=_version("app.css"), js=_version("app.js"))
    return Response(html, headers={
        "Content-Security-Policy": CSP.format(n=nonce),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    }, media_type="text/html; charset=utf-8")


async def static(request: Request) -> Response:
    if not _enabled(request):
        return _off()
    name = request.path_params["name"]
    asset = _asset(name) if STATIC_NAME.fullmatch(name) else None
    if asset is None:
        return Response("not found\n", 404, media_type="text/plain")
    return respond_asset(request, asset)


async def identity_token(request: Request) -> Response:
    """The demo shop's "server side" of its sign-in: the identity_token of a customer id
    (collector/identity/verify.py), so that the tag's identify links the device. A real shop
    signs only for the customer its own login just authenticated; this demo signs for any
    customer id of the demo site, which is why the demo site is a demo."""
    if not _enabled(request):
        return _off()
    user_id = request.query_params.get("user_id", "")
    site = request.app.state.collector.sites.get("demo")
    if site is None or not DEMO_CUSTOMER.fullmatch(user_id):
        return error_response(400, "user_id must be a demo customer id (C-XXXXXXXXXXXX)")
    signed = verify.token(site.write_key_hash, site.site_id, user_id)
    return Response(f'{{"identity_token": "{signed}"}}', headers={"Cache-Control": "no-store"},
                    media_type="application/json")


async def bare(request: Request) -> Response:
    return RedirectResponse("/demo/" + (f"?{request.url.query}" if request.url.query else ""),
                            308)

