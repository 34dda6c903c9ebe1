"""Load benchmark: the collector against nginx's ``empty_gif`` on the same core.

Measures, with wrk as the load generator on the other core:
  - pixel hits per second (GET /p.gif, fully enriched, spooled and fsynced before the 200);
  - JSON events per second, in batches of 10 (POST /collect);
  - p50/p99 latency of both;
  - how long until a hit is queryable in ClickHouse, under the pixel load (p50/p99; a
    second pixel run, so that the probe queries do not count against the throughput);
  - the collector's resident memory at that load;
  - where the collector's CPU went under each load (Python threads, engine merges, ...);
  - nginx serving a 1x1 GIF with ``empty_gif`` (the physical limit) and our ratio to it;
  - what the materialised views cost: hits/s and CPU per event with and without them,
    under the two loads and under a shop's JSON traffic (``SHOP``), which feeds every
    view's table where the JSON load above feeds only the product aggregates;
  - the production layout: the engine in a process of its own, on wrk's core.

Each collector is measured once it is quiet after its start (not while it loads its rules).

Needs Debian's ``wrk`` and ``nginx``. Run: ``python3 bench/load.py [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/131.0.0.0 Safari/537.36")
PIXEL_QUERY = ("site=demo&event=email_open&channel=email&consent=analytics&device_id=d-42"
               "&url=https%3A%2F%2Fshop.example%2Fnewsletter%3Futm_source%3Dnews&props.campaign=nov")
SERVER_CORE, CLIENT_CORE = "0", "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def process_cpu(pid: int) -> float:
    """CPU seconds a process has used, all its threads (an embedded engine's included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Thread names, as the engine (ClickHouse's pools) gives them; every Python thread keeps the
# process's name, and an insert or query also runs on the thread that called it (the
# flusher's, a request's). Other names are printed as they are.
THREAD_GROUPS = {"python3": "Python threads", "MergeMutate": "engine merges",
                 "ThreadPool": "engine pool (inserts, views, queries)"}


def thread_cpu(pid: int) -> dict[tuple[int, str], float]:
    """CPU seconds of each live thread of a process, by (thread id, name)."""
    used: dict[tuple[int, str], float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        used[(int(task.name), name)] = (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_split(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float],
              total: float) -> dict[str, float]:
    """Each thread name's share of ``total`` (the process's CPU seconds between two
    ``thread_cpu`` readings), named as in THREAD_GROUPS, and the share of threads that
    ended in between (their time is only in the total)."""
    groups: dict[str, float] = {}
    for (tid, name), seconds in after.items():
        group = THREAD_GROUPS.get(name, name)
        groups[group] = groups.get(group, 0.0) + seconds - before.get((tid, name), 0.0)
    ended = total - sum(groups.values())
    if ended > 0:
        groups["threads ended meanwhile"] = ended
    return {group: seconds / (total or 1.0) for group, seconds in groups.items()}


def wait_quiet(pid: int, timeout: float = 120, below: float = 0.2) -> float:
    """Wait until the process uses less than ``below`` of a core over a second (a collector
    that just started refreshes its pair views and merges parts): latency measured during
    that work would measure the start, not the service. Returns the seconds waited."""
    began = time.monotonic()
    last = process_cpu(pid)
    while time.monotonic() - began < timeout:
        time.sleep(1)
        now = process_cpu(pid)
        if now - last < below:
            break
        last = now
    return time.monotonic() - began


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> dict:
    cmd = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "--latency", "-H", f"User-Agent: {UA}"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    return {"rps": rps, "requests": requests, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else ""}


def nginx_limit(seconds: int, connections: int, workdir: Path) -> dict:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /p.gif {{ empty_gif; add_header Cache-Control "no-store"; }}
    }}
}}
""")
    proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, "nginx", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/p.gif")
        return wrk(f"http://127.0.0.1:{port}/p.gif?{PIXEL_QUERY}", seconds, connections)
    finally:
        proc.terminate()
        proc.wait()


class Collector:
    """``tagwerk serve`` pinned to ``core``: on the embedded engine, or on a ClickHouse URL."""

    def __init__(self, workdir: Path, core: str = SERVER_CORE, *args: str,
                 without_views: bool = False, env: dict[str, str] | None = None) -> None:
        self.port, self.sql_port = free_port(), free_port()
        self.data = workdir / f"var-{self.port}"
        if without_views:
            detach_views(self.data)
        self.proc = subprocess.Popen(
            ["taskset", "-c", core, sys.executable, "-m", "collector", "serve",
             "--port", str(self.port), "--sql-port", str(self.sql_port),
             "--data-dir", str(self.data), "--log-level", "warning", *args],
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / f"collector-{self.port}.log", "wb"),  # noqa: SIM115 (child keeps it)
            env={**os.environ, **(env or {})},
        )
        try:
            wait_http(f"{self.base}/readyz")
        except RuntimeError:
            self.stop()
            raise
        # Ready is not idle: the first seconds load the User-Agent rules and run the views'
        # first refreshes. A run measured during that would count part of the start, more
        # or less of it by chance (and on only one of the two collectors views_cost compares).
        self.quiet_after = wait_quiet(self.proc.pid)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sql(self, query: str) -> str:
        url = f"http://127.0.0.1:{self.sql_port}/?" + urllib.parse.urlencode({"query": query})
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def rss_mb(self) -> tuple[float, float]:
        """Resident memory, and the part of it that is mapped files (the engine's library
        code, about 240 MB here: shared with every process mapping it, not allocated)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return tuple(int(re.search(rf"{name}:\s+(\d+)", status).group(1)) / 1024
                     for name in ("VmRSS", "RssFile"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def detach_views(data: Path) -> None:
    """Migrate ``data``, then detach every materialised view for good: the same collector
    and schema with nothing derived at insert or refreshed, the baseline views are compared
    with (the issue's "no more than 10% lower with all the views in place")."""
    code = (
        "import sys; from pathlib import Path\n"
        "from collector.storage.embedded import EmbeddedStore\n"
        "from collector.migrations import migrate\n"
        "store = EmbeddedStore(Path(sys.argv[1]) / 'clickhouse'); migrate(store)\n"
        "for r in store.rows(\"SELECT name FROM system.tables WHERE database = 'tagwerk' "
        "AND engine = 'MaterializedView'\"):\n"
        "    store.execute(f\"DETACH TABLE tagwerk.{r['name']} PERMANENTLY\")\n"
        "store.close()\n")
    subprocess.run([sys.executable, "-c", code, str(data)], check=True)


def queryable_latency(c: Collector, stop: threading.Event, out: list[float]) -> None:
    """Send a marked hit every 100 ms; measure from its 2xx until ClickHouse returns it."""
    pending: dict[str, float] = {}
    while not stop.is_set():
        event_id = str(uuid.uuid4())
        body = json.dumps({"site": "demo", "event": "bench_probe", "event_id": event_id}).encode()
        req = urllib.request.Request(f"{c.base}/collect", body,
                                     {"Content-Type": "text/plain", "User-Agent": UA})
        urllib.request.urlopen(req, timeout=10).read()
        pending[event_id] = time.monotonic()
        found = c.sql("SELECT toString(event_id) FROM tagwerk.events "
                      "WHERE site_id = 'demo' AND event = 'bench_probe' "
                      "AND ts > now() - INTERVAL 5 MINUTE FORMAT TSV").split()
        now = time.monotonic()
        for event_id in found:
            if event_id in pending:
                out.append(now - pending.pop(event_id))
        time.sleep(0.1)


# bench/load.py's JSON load: 10 products viewed on one device, analytics consent. Of the
# views, only the product aggregates get rows from it.
BATCH = [{"event": "view_item", "url": f"https://shop.example/p/{i}",
          "consent": ["analytics"], "device_id": "d-42",
          "items": [{"product_id": f"sku-{i}", "price": 19.9, "quantity": 1}]}
         for i in range(10)]
# A shop's traffic, for what the views cost: page views, product views, a cart and a
# purchase in one session of a device that consented to analytics and personalization, so
# that every view's table gets rows (products, pages, sessions, purchases, persons).
SHOP = [{"event": event, "url": f"https://shop.example/p/sku-{i}",
         "consent": ["analytics", "personalization"], "device_id": "d-42",
         "session_id": "s-42",
         **({} if event == "page_view" else
            {"items": [{"product_id": f"sku-{i}", "category": f"c-{i % 3}", "price": 19.9,
                        "quantity": 1}]}),
         **({"revenue": 19.9, "currency": "EUR"} if event == "purchase" else {})}
        for i, event in enumerate(("page_view", "view_item", "page_view", "view_item",
                                   "add_to_cart", "page_view", "view_item", "page_view",
                                   "view_item", "purchase"))]


def batch_script(workdir: Path, events: list[dict], name: str = "batch") -> Path:
    """A wrk script posting ``events`` (10) per request."""
    script = workdir / f"{name}.lua"
    body = json.dumps({"site": "demo", "events": events})
    script.write_text('wrk.method = "POST"\n'
                      'wrk.headers["Content-Type"] = "text/plain"\n'
                      f"wrk.body = {json.dumps(body)}\n")
    return script


def costed(collector: Collector, url: str, seconds: int, connections: int,
           script: Path | None = None, events: int = 1) -> dict:
    """A wrk run, with the collector process's CPU per event (``cpu_us``): unlike hits/s,
    it hardly moves with what else the machine runs, so views and no views compare."""
    before, threads = process_cpu(collector.proc.pid), thread_cpu(collector.proc.pid)
    result = wrk(url, seconds, connections, script)
    used = process_cpu(collector.proc.pid) - before
    result["cpu_us"] = used / max(result["requests"] * events, 1) * 1e6
    result["split"] = cpu_split(threads, thread_cpu(collector.proc.pid), used)
    return result


def loads(workdir: Path, seconds: int, connections: int,
          shop: bool = False) -> dict[str, Callable[[Collector], dict]]:
    """The loads, each a ``costed`` run against a given collector: pixel hits, JSON events in
    batches of 10 and, with ``shop``, a shop's JSON traffic (``SHOP``) in batches of 10."""

    def posting(script: Path) -> Callable[[Collector], dict]:
        return lambda c: costed(c, f"{c.base}/collect", seconds, connections, script, events=10)

    runs = {
        "pixel": lambda c: costed(c, f"{c.base}/p.gif?{PIXEL_QUERY}", seconds, connections),
        "batch": posting(batch_script(workdir, BATCH)),
    }
    if shop:
        runs["shop"] = posting(batch_script(workdir, SHOP, "shop"))
    return runs


def warm_up(collector: Collector, connections: int) -> None:
    """Pixel hits for 2 s, not measured: caches, first parts."""
    wrk(f"{collector.base}/p.gif?{PIXEL_QUERY}", 2, connections)


def pixel_and_batch(collector: Collector, workdir: Path, seconds: int,
                    connections: int) -> dict:
    """Pixel hits (after a warm-up) and JSON batches against a running collector."""
    warm_up(collector, connections)
    return {load: run(collector) for load, run in loads(workdir, seconds, connections).items()}


VIEW_ROUNDS = 5  # runs of each load on each of the two collectors, alternated


def views_cost(workdir: Path, seconds: int, connections: int) -> dict:
    """Pixel hits, JSON batches and a shop's JSON traffic on two collectors started
    together, one with its materialised views and one with them detached, in alternated
    runs (A B B A, ...): this machine's speed drifts by more than the views cost over the
    minutes two runs in a row would take, and alternation spreads the drift over both.
    Medians of each collector's hits/s and CPU per event are compared; each run's are
    listed."""
    both = {"views": Collector(workdir)}
    try:
        both["bare"] = Collector(workdir, without_views=True)
    except RuntimeError:
        both["views"].stop()
        raise
    measure = loads(workdir, seconds, connections, shop=True)
    runs: dict[str, dict[str, list[dict]]] = {name: {load: [] for load in measure}
                                              for name in both}
    try:
        for c in both.values():
            warm_up(c, connections)
        for n in range(VIEW_ROUNDS):
            order = ("views", "bare") if n % 2 == 0 else ("bare", "views")
            for load, run in measure.items():
                for name in order:
                    runs[name][load].append(run(both[name]))
    finally:
        for c in both.values():
            c.stop()
    return {name: {load: {key: [r[key] for r in results] for key in ("rps", "cpu_us")}
                   for load, results in loads.items()}
            for name, loads in runs.items()}


def split_layout(workdir: Path, seconds: int, connections: int) -> dict:
    """The production layout: the collector alone on the server core, its ClickHouse in
    another process (here an embedded tagwerk's HTTP interface, on wrk's core)."""
    users = workdir / "users.json"
    users.write_text(json.dumps({"writer": {"password": "pw", "readonly": False}}))
    # Every process writing to one ClickHouse shares the privacy key (the README's Privacy).
    key = {"TAGWERK_PRIVACY_KEY": uuid.uuid4().hex * 2}
    clickhouse = Collector(workdir, CLIENT_CORE, "--sql-users-file", str(users), env=key)
    url = f"http://writer:pw@127.0.0.1:{clickhouse.sql_port}/tagwerk"
    try:
        collector = Collector(workdir, SERVER_CORE, "--clickhouse-url", url, env=key)
    except RuntimeError:
        clickhouse.stop()
        raise
    try:
        return pixel_and_batch(collector, workdir, seconds, connections)
    finally:
        collector.stop()
        clickhouse.stop()


def sample_rss(c: Collector, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    while not stop.is_set():
        out.append(c.rss_mb())
        stop.wait(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench needs {tool} (Debian: apt-get install wrk nginx util-linux)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench needs two cores: one for the server, one for wrk")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        limit = nginx_limit(args.seconds, args.connections, workdir)
        split = split_layout(workdir, args.seconds, args.connections)
        collector = Collector(workdir)
        try:
            pixel_url = f"{collector.base}/p.gif?{PIXEL_QUERY}"
            warm_up(collector, args.connections)
            measure = loads(workdir, args.seconds, args.connections)
            pixel = measure["pixel"](collector)
            # The same load again with a data team's reader: a probe hit every 100 ms and a
            # query for it (each query costs the server core too, so the throughput above is
            # measured without them), and the resident memory.
            rss: list[tuple[float, float]] = []
            probes: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(collector, stop, rss))
            prober = threading.Thread(target=queryable_latency, args=(collector, stop, probes))
            sampler.start()
            prober.start()
            probed = wrk(pixel_url, args.seconds, args.connections)
            stop.set()
            sampler.join()
            prober.join()

            batch = measure["batch"](collector)
            time.sleep(1.5)
            stored = int(collector.sql("SELECT count() FROM tagwerk.events").strip())
        finally:
            collector.stop()
        views = views_cost(workdir, max(args.seconds // 2, 3), args.connections)

    probes.sort()
    q50 = statistics.median(probes) * 1000 if probes else float("nan")
    q99 = probes[min(len(probes) - 1, int(len(probes) * 0.99))] * 1000 if probes else float("nan")
    print(f"cores: server {SERVER_CORE}, wrk {CLIENT_CORE}; {args.connections} connections, "
          f"{args.seconds} s per run")
    print("all in one: the collector and its embedded ClickHouse together on the server core "
          f"(measured once quiet, {collector.quiet_after:.0f} s after it answered)")
    print(f"nginx empty_gif (limit)   {limit['rps']:>10,.0f} req/s   "
          f"p50 {limit['p50_ms']:.2f} ms  p99 {limit['p99_ms']:.2f} ms")
    print(f"tagwerk pixel             {pixel['rps']:>10,.0f} hits/s  "
          f"p50 {pixel['p50_ms']:.2f} ms  p99 {pixel['p99_ms']:.2f} ms  "
          f"= {pixel['rps'] / limit['rps']:.1%} of nginx  (target >= 12,000 and 12%)")
    print(f"tagwerk JSON, batches of 10 {batch['rps'] * 10:>8,.0f} events/s "
          f"p50 {batch['p50_ms']:.2f} ms  p99 {batch['p99_ms']:.2f} ms  (target >= 40,000)")
    print(f"queryable after 2xx       p50 {q50:.0f} ms  p99 {q99:.0f} ms  over {len(probes)} "
          f"probes under pixel load ({probed['rps']:,.0f} hits/s while probed)  "
          "(target p99 < 1000 ms)")
    most, files = max(rss)
    print(f"collector RSS under load  max {most:.0f} MB  (target < 512 MB); of it "
          f"{files:.0f} MB mapped files (library code), {most - files:.0f} MB allocated")
    print(f"rows stored               {stored:,}; non-2xx: pixel {pixel['non2xx']} "
          f"+ {probed['non2xx']}, batch {batch['non2xx']}")
    # Where the server core goes: what the engine takes is what a faster request path
    # cannot win back.
    for label, run in (("pixel", pixel), ("JSON", batch)):
        shares = ", ".join(f"{group} {share:.0%}" for group, share
                           in sorted(run["split"].items(), key=lambda kv: -kv[1])
                           if share >= 0.005)
        print(f"collector CPU under {label:<5s} {shares}")
    print(f"views: two collectors side by side, with and without their materialised views, "
          f"{VIEW_ROUNDS} alternated runs of each load on each (medians; target: with views "
          "at most 10% lower)")
    for name, label, unit, scale, one in (
        ("pixel", "pixel", "hits/s", 1, "pixel hit"),
        ("batch", "JSON, batches of 10", "events/s", 10, "JSON event"),
        ("shop", "JSON, a shop's mix", "events/s", 10, "shop event"),
    ):
        ours, bare = views["views"][name], views["bare"][name]
        with_rps, bare_rps = (statistics.median(r["rps"]) * scale for r in (ours, bare))
        print(f"  tagwerk {label:<20s} {bare_rps:>10,.0f} {unit} without views, "
              f"{with_rps:>8,.0f} with: {with_rps / bare_rps - 1:+.1%}   (runs without: "
              f"{', '.join(f'{x * scale:,.0f}' for x in bare['rps'])}; with: "
              f"{', '.join(f'{x * scale:,.0f}' for x in ours['rps'])})")
        # On one core, throughput is the inverse of CPU per event: the steadier comparison.
        with_us, bare_us = (statistics.median(r["cpu_us"]) for r in (ours, bare))
        print(f"  CPU per {one:<10s} "
              f"{with_us:6.1f} us with views, {bare_us:6.1f} us without: throughput with "
              f"views at most {bare_us / with_us - 1:+.1%} on a saturated core   (runs "
              f"without: {', '.join(f'{x:.1f}' for x in bare['cpu_us'])}; with: "
              f"{', '.join(f'{x:.1f}' for x in ours['cpu_us'])})")
    print("production layout: the collector alone on the server core, ClickHouse in another "
          "process on wrk's core")
    print(f"  tagwerk pixel           {split['pixel']['rps']:>10,.0f} hits/s  "
          f"p50 {split['pixel']['p50_ms']:.2f} ms  p99 {split['pixel']['p99_ms']:.2f} ms  "
          f"= {split['pixel']['rps'] / limit['rps']:.1%} of nginx")
    print(f"  tagwerk JSON, batches of 10 {split['batch']['rps'] * 10:>6,.0f} events/s "
          f"p50 {split['batch']['p50_ms']:.2f} ms  p99 {split['batch']['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
