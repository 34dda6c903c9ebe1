"""Main-thread time the tag adds to a page load, in Chromium, against the 5 ms limit.

The page is the demo shop's home (``/demo/``, served by a ``tagwerk serve`` this script
starts). Each run is a new browser context (a new visitor: cold HTTP cache, no storage),
loaded, then given 2 s: the page-load phase, the headline (the tag boots 0.3 s after load,
so its cookie read, page view and the rest of its boot are in it). The tag's first request
comes after that phase, 5 s after the page view (or at once when the page is hidden): a
second trace until it is answered measures it, printed on its own line ("after the load
phase: first send"), so that no work of the tag goes unreported. Two visitors:

- ``returning``: a valid ``tw_consent`` cookie (analytics and personalisation granted,
  marketing not, so no third-party tag runs): the tag alone;
- ``first``: no decision yet: the tag loads ``decide.js`` and the consent banner, which
  fetches its texts and stylesheet and renders (the cost a first visit pays).

Two measurements per run, both on the page's renderer main thread:

1. **Attributed** (the headline number): a Chrome trace (CDP ``Tracing``) of the load; the
   time of every main-thread slice that belongs to the tag's own files (``/t/demo.js``,
   ``/t/decide.js``, ``/t/banner.js``, ``/t/banner.css``): script compilation
   (``v8.compile``), top-level evaluation (``EvaluateScript``), every callback into them
   (``FunctionCall``: listeners,
   timers, promise continuations, the banner's rendering code) and stylesheet parsing
   (``ParseAuthorStyleSheet``). Nested slices are merged (interval union), so nothing is
   counted twice. Per run, so median and p90 are of a real distribution. It misses the
   style and layout work the tag's DOM changes cause later, and calls the page's own code
   makes into the tag (``dataLayer.push`` from the shop's script is timed as the shop's),
   and promise continuations (microtasks have no slice of their own in the trace: the tag
   runs its boot in a task, so that it is counted). Printed with it: the same slices'
   thread time (``tdur``), the CPU time the tag used, without the time its slices were
   descheduled or blocked; on a machine where the browser, its other processes and the
   collector share one core (``taskset -c 1``) the wall time is several times that.
2. **A/B** (the cross-check, including such indirect work): CDP ``Performance.getMetrics``
   ``TaskDuration`` (all main-thread task time) of loads with the tag against loads where
   ``/t/demo.js`` is answered with an empty script (the snippet's stub stays; nothing else
   changes). These loads are not traced (tracing slows the page it records), and runs
   alternate with and without. Reported as median(with) - median(without)
   and p90(with) - p90(without): differences of two noisy distributions, so read them as
   an estimate with a few milliseconds of noise, not as a per-run figure.

Run: ``python3 bench/tag_mainthread.py [--runs 20] [--cpu-slowdown 1]`` (``--cpu-slowdown 4``
is Lighthouse's mid-range phone). Needs Chromium (``apt-get install -y chromium``) and
Playwright for Python.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from e2e.conftest import launch  # noqa: E402
from e2e.shop import DESKTOP  # noqa: E402
from tests.servers import Server  # noqa: E402

LIMIT_MS = 5.0
SETTLE_MS = 2000  # the page-load phase measured: from navigation until 2 s after load
# Then a second trace until the tag's first request is answered: it sends 5 s after the page
# view (js_snippet/src/send.js), the page view comes 0.3 s after load.
LATER_MS = 4500
TAG_FILES = re.compile(r"/t/(demo\.js|decide\.js|banner\.js|banner\.css)")
SHOP_FILES = re.compile(r"/demo/static/app\.(js|css)")  # the yardstick: the shop's own script
ATTRIBUTED = {"v8.compile", "EvaluateScript", "FunctionCall", "ParseAuthorStyleSheet"}
# The lightest set that has the slices above: more categories slow the page measurably.
CATEGORIES = ["devtools.timeline"]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def attributed_ms(events: list[dict], files: re.Pattern = TAG_FILES,
                  thread: bool = False) -> float:
    """Main-thread time of the slices of ``files``: the union of their intervals, per thread.
    thread: their thread time (``tdur``: CPU time, without the time the thread was not
    running, e.g. preempted by other processes on a shared core or blocked in a synchronous
    call) instead, summed over the outermost slices."""
    main = {(e["pid"], e["tid"]) for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"
            and e["args"].get("name") == "CrRendererMain"}
    spans: dict[tuple, list[tuple[float, float]]] = {}
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in ATTRIBUTED or "dur" not in e:
            continue
        if (e["pid"], e["tid"]) not in main:
            continue
        data = (e.get("args") or {}).get("data") or {}
        url = data.get("url") or data.get("styleSheetUrl") or data.get("scriptName") or ""
        if files.search(url):
            spans.setdefault((e["pid"], e["tid"]), []).append(
                (e["ts"], e["ts"] + e["dur"], e.get("tdur", e["dur"])))
    total = 0.0
    for intervals in spans.values():
        end = float("-inf")
        for start, stop, tdur in sorted(intervals, key=lambda i: (i[0], -i[1])):
            if stop <= end:
                continue
            if thread:
                total += tdur if start >= end else 0.0  # overlaps are nested: counted once
            else:
                total += stop - max(start, end)
            end = stop
    return total / 1000  # µs -> ms


def consent_cookie(server: Server) -> dict:
    """A valid decision for the live container: analytics and personalisation granted."""
    policy = re.search(rb'"p":"([0-9a-f]{16})"',
                       httpx.get(f"{server.url}/t/demo.js").content).group(1).decode()
    value = ".".join(["v1", uuid.uuid4().hex, policy, "necessary,analytics,personalization",
                      str(int(time.time())), "banner"])
    return {"name": "tw_consent", "value": value, "url": server.url}


class Trace:
    """Chrome traces of one page, one after another: start(), then stop() -> its events."""

    def __init__(self, page, cdp) -> None:
        self.page, self.cdp = page, cdp
        self.events: list[dict] = []
        self.done = False
        cdp.on("Tracing.dataCollected", lambda m: self.events.extend(m["value"]))
        cdp.on("Tracing.tracingComplete", lambda m: setattr(self, "done", True))

    def start(self) -> None:
        self.events, self.done = [], False
        self.cdp.send("Tracing.start", {"traceConfig": {"includedCategories": CATEGORIES},
                                        "transferMode": "ReportEvents"})

    def stop(self) -> list[dict]:
        self.cdp.send("Tracing.end")
        while not self.done:
            self.page.wait_for_timeout(20)
        return self.events


def one_load(browser, server: Server, tag: bool, returning: bool, slowdown: float,
             trace: bool) -> tuple[float, float, float, float, float]:
    """One page load in a new context: (ms attributed to the tag, to the shop's script
    (nan without a trace), TaskDuration ms, the tag's thread time (nan without a trace), ms
    attributed to the tag after the load phase, until its first request was answered (nan
    without a trace))."""
    context = browser.new_context(base_url=server.url, **DESKTOP)
    try:
        if returning:
            context.add_cookies([consent_cookie(server)])
        page = context.new_page()
        if not tag:
            page.route("**/t/demo.js", lambda route: route.fulfill(
                status=200, body="", content_type="text/javascript"))
        cdp = context.new_cdp_session(page)
        tracing = Trace(page, cdp)
        if slowdown != 1:
            cdp.send("Emulation.setCPUThrottlingRate", {"rate": slowdown})
        cdp.send("Performance.enable")
        if trace:
            tracing.start()
        page.goto("/demo/", wait_until="load")
        if tag and not returning:
            page.get_by_role("dialog").wait_for()
        page.wait_for_timeout(SETTLE_MS)
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        attributed = shop = cpu = later = float("nan")
        if trace:
            events = tracing.stop()
            attributed = attributed_ms(events)
            cpu = attributed_ms(events, thread=True)
            shop = attributed_ms(events, SHOP_FILES)
            tracing.start()
            page.wait_for_timeout(LATER_MS)
            later = attributed_ms(tracing.stop())
            sent = page.evaluate("""() => performance.getEntriesByType('resource')
                .filter((e) => e.name.includes('/collect') && e.responseEnd > 0).length""")
            assert sent, "the tag's first request was not answered within the second trace"
        if tag and not returning:
            assert page.get_by_role("dialog").is_visible()
        return attributed, shop, metrics["TaskDuration"] * 1000, cpu, later
    finally:
        context.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cpu-slowdown", type=float, default=1.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "var").start()
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                results = {}
                for visitor in ("returning", "first"):
                    returning = visitor == "returning"
                    for _ in range(2):  # warm up the server's caches and the browser
                        one_load(browser, server, True, returning, args.cpu_slowdown, True)
                    attributed, shop, with_tag, without, cpu, later = [], [], [], [], [], []
                    for run in range(args.runs):
                        # The A/B pair runs untraced (a trace slows the page it records),
                        # in alternating order.
                        for tag in (True, False) if run % 2 else (False, True):
                            task = one_load(browser, server, tag, returning,
                                            args.cpu_slowdown, False)[2]
                            (with_tag if tag else without).append(task)
                        a, s, _, c, z = one_load(browser, server, True, returning,
                                                 args.cpu_slowdown, True)
                        attributed.append(a)
                        shop.append(s)
                        cpu.append(c)
                        later.append(z)
                    results[visitor] = (attributed, shop, with_tag, without, cpu, later)
                browser.close()
        finally:
            server.stop()

    print(f"tag main-thread time on page load: demo home, Chromium headless, "
          f"{args.runs} runs each, CPU slowdown x{args.cpu_slowdown:g}, limit {LIMIT_MS:g} ms")
    print()
    print(f"{'visitor':<10} {'measure':<34} {'median':>8} {'p90':>8} {'median/limit':>13}")
    for visitor, (attributed, shop, with_tag, without, cpu, later) in results.items():
        med, p90 = statistics.median(attributed), percentile(attributed, 90)
        print(f"{visitor:<10} {'attributed to the tag (trace)':<34} {med:>6.2f}ms {p90:>6.2f}ms "
              f"{med / LIMIT_MS:>12.2f}x")
        print(f"{'':<10} {'  (its thread time, tdur)':<34} {statistics.median(cpu):>6.2f}ms "
              f"{percentile(cpu, 90):>6.2f}ms")
        dmed = statistics.median(with_tag) - statistics.median(without)
        dp90 = percentile(with_tag, 90) - percentile(without, 90)
        print(f"{'':<10} {'A/B TaskDuration, with - without':<34} {dmed:>6.2f}ms {dp90:>6.2f}ms "
              f"{dmed / LIMIT_MS:>12.2f}x")
        print(f"{'':<10} {'  (TaskDuration with / without)':<34} "
              f"{statistics.median(with_tag):>6.1f}ms / {statistics.median(without):.1f}ms median")
        label = "  (the shop's app.js, for scale)"
        print(f"{'':<10} {label:<34} {statistics.median(shop):>6.2f}ms "
              f"{percentile(shop, 90):>6.2f}ms")
        label = "after the load phase: first send"
        print(f"{'':<10} {label:<34} {statistics.median(later):>6.2f}ms "
              f"{percentile(later, 90):>6.2f}ms")
    print()
    print("returning: a decision exists, the tag alone (no banner, no marketing tag);")
    print("first: no decision, the tag loads and renders the consent banner.")
    print("The load phase ends 2 s after the load event; the tag's first request (5 s after its")
    print("page view, at once when the page is hidden) comes later, measured on its own line.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
