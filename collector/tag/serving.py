"""Serving the tag (js_snippet/DESIGN.md, section 2): ``GET /t/{site}.js``, the site's own
tag path, and the static files of the bundle directory.

``/t/{site}.js`` is a prebuilt bundle of the core (``tag.js``, or ``tag.basic.js`` when the
container needs less of it: :func:`core_bundle`) with the site's live container inlined in
place of the JS string literal ``"__TAGWERK_CONFIG__"`` as a compact config
(:func:`core_config`); ``/t/{site}/tm.js`` is the bundle ``engine.js`` (the tag-manager
engine, which the core loads only when it has something to do) with the site's variables,
triggers and tags inlined the same way (:func:`engine_config`). Both configs are an internal
contract between the server and the tag (js_snippet/DESIGN.md section 2), not the container
document. Each answer is built and compressed (gzip, brotli) once per site, container
version and bundle, then served from memory with a strong ETag; ``If-None-Match`` answers
304. ``/t/decide.js`` (consent decisions), the banner and the debug overlay are static files
the tag loads on first use.

The bundle directory is the ``tagwerk_js`` package data (``js_snippet/dist`` in the
repository), or ``Settings.tag_dir``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import brotli
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from collector.containers import Live
from collector.containers.schema import DEFAULT_SETTINGS
from collector.service import Collector
from collector.storage import StorageError
from collector.web.clientip import is_https
from collector.web.http import error_response, header_safe, header_url
from collector.web.qvalues import weighted
from consent.policy import DEFAULT_LIFETIMES

log = logging.getLogger("tagwerk.tag")

PLACEHOLDER = b'"__TAGWERK_CONFIG__"'
CACHE_CONTROL = "public, max-age=300, stale-while-revalidate=86400"
JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
STATIC = {"decide.js": JS, "banner.js": JS, "banner.css": CSS, "debug.js": JS, "debug.css": CSS}
MAX_CACHED = 512  # built answers kept in memory (least recently used go first)
MAX_PREVIEWS = 16  # built previews kept apart: drafts being edited must not evict live tags
# gzip level and brotli quality: the live tag is compressed once and served to every visitor,
# so as hard as can be; a preview is ``private, no-store`` and seen by one browser, built
# again at each edit of the draft: brotli 11 took 0.25 s of CPU for a 244 KB draft there.
LIVE_LEVELS = (9, 11)
PREVIEW_LEVELS = (6, 5)
ASSETS = ("decide.js", "banner.js", "banner.css", "debug.js", "engine.js")  # one ``v`` for all


def dist_dir(tag_dir: Path | str | None = None) -> Path:
    """Where the bundle is: ``tag_dir``, else the installed ``tagwerk_js`` package data,
    else ``js_snippet/dist`` beside this package (a checkout that was not reinstalled)."""
    if tag_dir:
        return Path(tag_dir)
    try:
        files = resources.files("tagwerk_js")
        if isinstance(files, Path):
            return files
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent.parent / "js_snippet" / "dist"


# -- built answers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    """One answer, with its compressed forms: built once, served many times."""

    body: bytes
    media: str
    etag: str  # hex digest of the body; the quoted ETag adds the content coding
    gzip: bytes
    br: bytes

    @classmethod
    def build(cls, body: bytes, media: str, levels: tuple[int, int] = LIVE_LEVELS) -> Asset:
        gzip_level, brotli_quality = levels
        return cls(body, media, hashlib.sha256(body).hexdigest()[:32],
                   gzip.compress(body, gzip_level, mtime=0),
                   brotli.compress(body, quality=brotli_quality))


def _codings(accept: str) -> set[str]:
    """The content codings an Accept-Encoding header allows (q > 0)."""
    allowed, star = set(), False
    refused = set()
    for name, q in weighted(accept.lower()):
        if name == "*":
            star = q > 0
        elif q > 0:
            allowed.add(name)
        else:
            refused.add(name)
    if star:
        allowed |= {"br", "gzip"} - refused
    return allowed


def _matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): any representation of the same body matches."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/").strip('"')
        if tag.split("-", 1)[0] == etag:
            return True
    return False


def respond_asset(request: Request, asset: Asset, extra: dict[str, str] | None = None) -> Response:
    codings = _codings(request.headers.get("accept-encoding", ""))
    if "br" in codings:
        body, coding = asset.br, "br"
    elif "gzip" in codings or "x-gzip" in codings:
        body, coding = asset.gzip, "gzip"
    else:
        body, coding = asset.body, ""
    headers = {
        # Strong, and different per content coding, as a byte-exact ETag must be.
        "ETag": f'"{asset.etag}-{coding}"' if coding else f'"{asset.etag}"',
        "Cache-Control": CACHE_CONTROL,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
        **(extra or {}),
    }
    if _matches(request.headers.get("if-none-match", ""), asset.etag):
        return Response(status_code=304, headers=headers)
    if coding:
        headers["Content-Encoding"] = coding
    return Response(body, headers=headers, media_type=asset.media)


PREVIEW_COOKIE = "tw_preview"


def _preview_cookie(token: str, max_age: int, secure: bool) -> str:
    # Sent only to the tag paths; the token itself expires on the server side.
    return (f"{PREVIEW_COOKIE}={token}; Path=/t/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
            f"{'; Secure' if secure else ''}")


def error(status: int, message: str, headers: dict[str, str] | None = None,
          field: str = "") -> Response:
    """A JSON error that no cache keeps."""
    return error_response(status, message, field, headers)


# -- the bundle directory ---------------------------------------------------------------------


class Dist:
    """Files of the bundle directory, read again when they change (a rebuild while serving)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, tuple[tuple[int, int], bytes, str]] = {}
        self._lock = threading.Lock()

    def read(self, name: str) -> tuple[bytes, str] | None:
        """The file's bytes and a hash of them; None if it is missing."""
        path = self.directory / name
        try:
            stat = os.stat(path)
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._files.get(name)
        if cached and cached[0] == stamp:
            return cached[1], cached[2]
        try:
            data = path.read_bytes()
        except OSError:
            return None
        digest = hashlib.sha256(data).hexdigest()[:16]
        with self._lock:
            self._files[name] = (stamp, data, digest)
        return data, digest


# -- the configs the tag is served -------------------------------------------------------------

# settings.auto -> the letter the tag knows it by (js_snippet/src/main.js autoSwitches).
AUTO = {"page_views": "p", "spa": "s", "clicks": "c", "outbound_links": "o", "downloads": "d",
        "scroll_depth": "x", "forms": "f", "ecommerce": "e"}
# The tag's built-in defaults: a value equal to one of these is left out of the config.
DEFAULT_AUTO = "".join(AUTO[k] for k, on in DEFAULT_SETTINGS["auto"].items() if on)
DEFAULT_PURPOSES = "necessary!,analytics,personalization,marketing"
ENGINE_AT_BOOT = ("timer", "element_visible")  # signals only the engine itself can watch
# Trigger types the core reports to the engine besides page views (main.js TW_BASIC).
SIGNALLED = frozenset({"click", "link_click", "outbound_link", "file_download", "form_submit",
                       "scroll_depth", "history_change", "custom_event"})
BASIC_BUNDLE = "tag.basic.js"


def _purposes(purposes: list[dict[str, Any]]) -> str:
    """``id`` + ``!`` when required, ``+`` when granted by default, comma-separated."""
    return ",".join(p["id"] + ("!" if p.get("required") else "+" if p.get("default") else "")
                    for p in purposes)


def core_config(site_id: str, doc: dict[str, Any], policy: str, version: str) -> dict[str, Any]:
    """What the core (``/t/{site}.js``) is served of a normalized container: short keys, values
    equal to the tag's defaults left out, asset URLs reduced to one version hash (the tag
    resolves paths against its own URL). Keys: s site, p policy hash, v asset version,
    e endpoint, d cookie domain, m session timeout (minutes), a auto-tracking letters,
    x download extensions, t scroll thresholds, k scroll_depth trigger percents, P purposes,
    g the purposes granted before a decision (required and default-on),
    l/r lifetime/rejection lifetime (days), n purposes the tags need (the engine is loaded
    once one is granted), w load the engine at boot (timer or element_visible triggers)."""
    settings, consent = doc["settings"], doc["consent"]
    config: dict[str, Any] = {"s": site_id, "p": policy, "v": version}
    defaults = DEFAULT_SETTINGS
    endpoint = settings.get("endpoint", defaults["endpoint"])
    if endpoint != "/collect":
        config["e"] = endpoint
    if settings.get("cookie_domain"):
        config["d"] = settings["cookie_domain"]
    if settings.get("session_timeout_minutes", 30) != 30:
        config["m"] = settings["session_timeout_minutes"]
    auto = {**defaults["auto"], **settings.get("auto", {})}
    letters = "".join(AUTO[k] for k in AUTO if auto.get(k))
    if letters != DEFAULT_AUTO:
        config["a"] = letters or "-"  # "" would read as "the defaults"
    extensions = [e.lower() for e in settings.get("download_extensions",
                                                    defaults["download_extensions"])]
    if extensions != defaults["download_extensions"]:
        config["x"] = " ".join(extensions) or "-"
    thresholds = settings.get("scroll_thresholds", defaults["scroll_thresholds"])
    if thresholds != defaults["scroll_thresholds"]:
        config["t"] = thresholds
    purposes = _purposes(consent["purposes"])
    if purposes != DEFAULT_PURPOSES:
        config["P"] = purposes
    granted = ",".join(p["id"] for p in consent["purposes"]
                       if p.get("required") or p.get("default"))
    if granted != "necessary":
        config["g"] = granted  # before any decision (the tag turns marketing off under GPC)
    # The tag's own defaults (consent.js days()) are DEFAULT_LIFETIMES: only others are sent.
    if consent.get("lifetime_days", DEFAULT_LIFETIMES[0]) != DEFAULT_LIFETIMES[0]:
        config["l"] = consent["lifetime_days"]
    if consent.get("rejection_lifetime_days", DEFAULT_LIFETIMES[1]) != DEFAULT_LIFETIMES[1]:
        config["r"] = consent["rejection_lifetime_days"]
    tags, triggers = doc.get("tags", []), doc.get("triggers", [])
    if tags:  # without tags, triggers have nothing to fire: no engine, no signal log
        percents = sorted({t["percent"] for t in triggers if t["type"] == "scroll_depth"}
                          - set(thresholds))
        if percents:
            config["k"] = percents
        config["n"] = ",".join(sorted({t["purpose"] for t in tags}))
        if any(t["type"] in ENGINE_AT_BOOT for t in triggers):
            config["w"] = 1
    return config


def core_bundle(doc: dict[str, Any]) -> str:
    """Which build of the core a normalized container is served: ``tag.basic.js`` (about
    100 B smaller gzipped) when it needs neither the automatic click event nor trigger
    signals other than page views (no tags, or no trigger of a type in ``SIGNALLED``), as
    the default container; else ``tag.js``, with everything."""
    clicks = {**DEFAULT_SETTINGS["auto"], **doc["settings"].get("auto", {})}.get("clicks")
    signals = bool(doc.get("tags")) and any(t["type"] in SIGNALLED
                                            for t in doc.get("triggers", []))
    return "tag.js" if clicks or signals else BASIC_BUNDLE


def engine_config(doc: dict[str, Any]) -> dict[str, Any]:
    """What the engine (``/t/{site}/tm.js``) is served: v variables, r triggers, g tags, as
    in the container without tag names and empty condition and blocking-trigger lists."""
    triggers = [{k: v for k, v in t.items() if not (k == "conditions" and not v)}
                for t in doc.get("triggers", [])]
    tags = [{k: v for k, v in t.items()
             if k != "name" and not (k == "blocking_triggers" and not v)}
            for t in doc.get("tags", [])]
    return {"v": doc.get("variables", []), "r": triggers, "g": tags}


# -- the server -------------------------------------------------------------------------------


def js_json(value: Any) -> bytes:
    """JSON that is safe inside a script: no ``</script>`` or ``<!--`` can end or bend it, and
    U+2028/U+2029 (line breaks to older JS engines) are escaped."""
    return (orjson.dumps(value).replace(b"<", b"\\u003c")
            .replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029"))


class TagServer:
    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.dist = Dist(dist_dir(collector.settings.tag_dir))
        self._assets: OrderedDict[tuple, Asset] = OrderedDict()
        self._previews: OrderedDict[tuple, Asset] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[tuple[bool, tuple], asyncio.Future[Asset]] = {}

    # -- cache

    async def _asset(self, key: tuple, build, preview: bool = False) -> Asset:
        """The answer for ``key``, built in a worker thread (compressing blocks the event
        loop for long) if it is not kept; least recently used first out. One build per key
        at a time: the requests that miss while it runs wait for it (after a publish, a
        burst of visitors would otherwise each compress the same tag, seconds of CPU each)."""
        cache = self._previews if preview else self._assets
        asset = cache.get(key)
        if asset is not None:
            with self._lock:
                if key in cache:
                    cache.move_to_end(key)
            return asset
        building = self._building.get((preview, key))
        if building is None:
            building = asyncio.ensure_future(run_in_threadpool(build))
            self._building[preview, key] = building
            building.add_done_callback(lambda done: self._built(done, preview, key))
        # (shielded: a client that goes away does not cancel the others' build)
        return await asyncio.shield(building)

    def _built(self, done: asyncio.Future, preview: bool, key: tuple) -> None:
        """Keep a finished build's asset (a failed one is each waiter's error)."""
        del self._building[preview, key]
        if done.cancelled() or done.exception() is not None:
            return
        cache, limit = (self._previews, MAX_PREVIEWS) if preview else (self._assets, MAX_CACHED)
        with self._lock:  # (the only writer of the caches)
            cache[key] = done.result()
            while len(cache) > limit:
                cache.popitem(last=False)

    # -- answers

    async def static(self, request: Request, name: str) -> Response:
        found = self.dist.read(name)
        if found is None:
            return error(404, f"/t/{name} is not built")
        data, digest = found
        return respond_asset(request, await self._asset(
            ("static", name, digest), lambda: Asset.build(data, STATIC[name])))

    async def site_tag(self, request: Request, site_id: str) -> Response:
        """``/t/{site}.js``: the core (the build :func:`core_bundle` picks) with
        :func:`core_config`."""
        return await self._site_file(request, site_id, core_bundle, lambda live, version: (
            core_config(site_id, live.document, live.policy, version)))

    async def site_engine(self, request: Request, site_id: str) -> Response:
        """``/t/{site}/tm.js``: the engine with :func:`engine_config`."""
        return await self._site_file(request, site_id, lambda doc: "engine.js",
                                     lambda live, version: engine_config(live.document))

    async def _site_file(self, request: Request, site_id: str, bundle_of, config) -> Response:
        """A site's file: the bundle ``bundle_of(container)`` names, its config inlined."""
        site = await self.collector.sites.find(site_id)
        if site is None:
            return error(404, f"unknown site {site_id[:64]!r}")
        preview = await self._previewing(request, site_id)
        if preview:
            live = await run_in_threadpool(self.collector.containers.draft_live, site_id)
        else:
            live = await self.collector.containers.served(site_id)
        if live is None:
            return error(503, "the container cannot be read now; try again")
        name = bundle_of(live.document)
        bundle = self.dist.read(name)
        if bundle is None:
            log.error("the tag bundle is missing: %s", self.dist.directory / name)
            return error(503, f"the tag bundle is not built (js_snippet/dist/{name})")
        data, digest = bundle
        if data.count(PLACEHOLDER) != 1:
            log.error("%s must contain %s exactly once", name, PLACEHOLDER.decode())
            return error(503, "the tag bundle is broken: no single config placeholder")
        version = self._version(live)

        def build() -> Asset:
            inlined = js_json(config(live, version))
            return Asset.build(data.replace(PLACEHOLDER, inlined, 1), JS,
                               PREVIEW_LEVELS if preview else LIVE_LEVELS)

        # The draft's digest is in the key (and in ``version``): an edit builds anew.
        key = (name, site_id, live.version, live.digest, digest, version)
        asset = await self._asset(key, build, preview)
        if preview:  # the draft, for the browser holding the link: no cache keeps it
            return respond_asset(request, asset, {"Cache-Control": "private, no-store"})
        return respond_asset(request, asset)

    async def _previewing(self, request: Request, site_id: str) -> bool:
        token = request.cookies.get(PREVIEW_COOKIE)
        # A forged token is refused here, without a thread or a query.
        if not token or not self.collector.previews.authentic(token):
            return False
        try:
            found = await run_in_threadpool(self.collector.previews.site_of, token)
        except StorageError:
            return False
        return found == site_id

    async def start_preview(self, request: Request) -> Response:
        """``GET /t/preview?token=...&to=URL``: the preview link. Sets the preview cookie for
        the collector's /t/ paths and sends the browser to ``to``, a page of the site, with
        the debug overlay on. ``end=1`` ends the preview: :meth:`end_preview`."""
        params = request.query_params
        secure = self._secure(request)
        if params.get("end"):
            return await self.end_preview(request, secure)
        token, raw_target = params.get("token", ""), params.get("to", "")
        # Checked on the raw text, before urllib (which drops tab, CR and LF) sees it: it
        # goes into the Location header.
        target = header_url(raw_target)
        if target is None:
            return error(400, "'to' must be a URL without whitespace or control characters "
                         "(CR, LF, tab, NUL, U+2028...)", field="to")
        if not header_safe(token):
            return error(400, "'token' is malformed", field="token")
        try:
            site_id = await run_in_threadpool(self.collector.previews.site_of, token)
        except StorageError:
            return error(503, "previews cannot be checked now; try again")
        site = await self.collector.sites.find(site_id) if site_id else None
        if site is None:
            return error(404, "no such preview, or it has expired")
        if not site.has_page(target):
            # Only pages of the site itself: the link must not be an open redirect.
            return error(400, "'to' must be a page on one of the site's origins", field="to")
        separator = "&" if "?" in target.split("#")[0] else "?"
        head, _, fragment = target.partition("#")
        location = head + separator + "tagwerk_debug=1" + ("#" + fragment if fragment else "")
        headers = {
            "Location": location,
            "Set-Cookie": _preview_cookie(token, self.collector.previews.MAX_MINUTES * 60, secure),
            # The browser may hold the live tag for max-age: drop it, so the draft shows now.
            "Clear-Site-Data": '"cache"',
            "Cache-Control": "no-store",
        }
        if not all(map(header_safe, headers.values())):  # never, after the checks above
            log.error("preview: refused to send an unsafe header: %r", headers)
            return error(400, "'to' cannot be sent as a Location", field="to")
        return Response(status_code=303, headers=headers)

    async def end_preview(self, request: Request, secure: bool) -> Response:
        """``GET /t/preview?end=1``: clears the browser's preview cookie and ends its token
        on the server, for every collector (within ``Previews.RECHECK`` seconds on one that
        has just seen it): a copy of the cookie or the link shows the live container then."""
        headers = {"Set-Cookie": _preview_cookie("", 0, secure), "Clear-Site-Data": '"cache"',
                   "Cache-Control": "no-store"}
        token = request.cookies.get(PREVIEW_COOKIE, "")
        if token:
            try:
                await run_in_threadpool(self.collector.previews.end, token)
            except StorageError:
                return error(503, "the preview cannot be ended now; try again", headers)
        return Response(b"preview ended\n", headers=headers, media_type="text/plain")

    # -- parts

    def _secure(self, request: Request) -> bool:
        """Whether the browser came over https, so that the preview cookie is ``Secure``
        (``X-Forwarded-Proto`` believed only from trusted proxies)."""
        return is_https(request.url.scheme, request.headers.get("x-forwarded-proto"),
                        request.client.host if request.client else "",
                        self.collector.settings.networks)

    def _version(self, live: Live) -> str:
        """The ``?v=`` of every file the tag loads (banner, its CSS, debug overlay, engine,
        consent texts): one hash over the container and those files, so any change of one
        makes new URLs. One short hash instead of four URLs keeps the served tag small."""
        parts = [live.digest]
        for name in ASSETS:
            found = self.dist.read(name)
            parts.append(found[1] if found else "-")
        return hashlib.sha256(":".join(parts).encode()).hexdigest()[:12]

    # -- a site's own tag path

    async def own_tag_path(self, request: Request) -> Response | None:
        """The tag at a container's own ``settings.tag_path``, or None when the path is not
        one.

        Custom paths are data (any path a site chooses, looked up in a table), so they are
        not routes: the route table asks this last, for a GET or HEAD no route matched,
        before answering 404.
        """
        containers = self.collector.containers
        try:
            paths = containers.cached_tag_paths()
            if paths is None:
                paths = await run_in_threadpool(containers.custom_tag_paths)
        except StorageError:
            paths = {}
        site_id = paths.get(request.scope["path"])
        return None if site_id is None else await self.site_tag(request, site_id)


# -- handlers (their paths: collector/routes.py) ----------------------------------------------


def _server(request: Request) -> TagServer:
    return request.app.state.tags


async def engine_js(request: Request) -> Response:
    return await _server(request).site_engine(request, request.path_params["site"])


async def tag_js(request: Request) -> Response:
    name = request.path_params["name"]
    if f"{name}.js" in STATIC:
        return await _server(request).static(request, f"{name}.js")
    return await _server(request).site_tag(request, name)


async def stylesheet(request: Request) -> Response:
    name = f"{request.path_params['name']}.css"
    if name not in STATIC:
        return error(404, "no such stylesheet")
    return await _server(request).static(request, name)


async def preview(request: Request) -> Response:
    return await _server(request).start_preview(request)


async def own_tag_path(request: Request) -> Response | None:
    return await _server(request).own_tag_path(request)
