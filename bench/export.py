"""Raw export throughput and the collector's memory while it exports.

Runs ``tagwerk serve`` as a subprocess on a fresh data directory, generates ``--rows`` rows
of one site inside the engine (``INSERT ... SELECT FROM numbers``: skewed products, event
names, devices, campaigns; purchases with items), then exports them all through
``GET /api/v1/sites/{site}/export`` following the cursor, as NDJSON and as Parquet, and
prints rows/s, the ratio to the goal (300,000 rows/s) and the growth of the collector's
resident memory over the whole export (goal: under 100 MB).

Where the time goes: each run prints the CPU the collector's engine threads (chDB: reading,
formatting) and its Python threads (pipe, HTTP) used, in cores, and the bench's own (the
client: HTTP parsing, counting rows). ``--limit`` 0 (the default) sends none, so answers are
as large as the endpoint's default allows.

The collector refreshes the pair views (coview_pairs, copurchase_pairs) every minute, which
costs the process several hundred MB of RSS for a few seconds, whatever else it does. With
``--refresh avoid`` (the default) each run starts right after a refresh has finished, so the
RSS growth is the export's own; ``--refresh overlap`` starts each run just before one, so
that it overlaps. Every run says whether a refresh ran during it ("refresh: yes/no"), and the
summary gives the RSS growth of runs with and without one apart.

    python3 bench/export.py [--rows 10000000] [--runs 3] [--limit 0] [--refresh avoid]
        [--cores 1] [--data-dir DIR (kept; its rows are reused by the next run)] [--stream]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pyarrow.parquet as pq

GOAL_ROWS = 300_000
GOAL_MB = 100
SITE = "bench"
CHUNK = 1_000_000

GENERATE = """
INSERT INTO tagwerk.events (event_id, site_id, event, type, ts, received_at, channel,
    device_id, session_id, user_id, consent, url, path, title, referrer, referrer_host,
    utm_source, utm_medium, utm_campaign, device_class, browser, os, country, city, language,
    screen, order_id, revenue, currency, items, props)
SELECT generateUUIDv4(number), 'bench', ev,
    if(ev = 'page_view', 'page', 'track'),
    now64(3) - toIntervalSecond(rand(1) % (90 * 86400)), now64(3),
    ['web', 'web', 'web', 'app', 'email', 'pos'][1 + rand(2) % 6],
    concat('d-', toString(dev)), concat('s-', toString(dev), '-', toString(rand(3) % 20)),
    if(rand(4) % 4 = 0, concat('u-', toString(dev % 50000)), ''),
    ['analytics', 'marketing'],
    concat('https://shop.example/p/', prod, '?utm_source=news'), concat('/p/', prod),
    concat('Product ', prod), 'https://www.google.com/', 'www.google.com',
    ['news', 'google', '', '', 'facebook'][1 + rand(5) % 5], 'email', 'autumn-sale',
    ['desktop', 'mobile', 'mobile', 'tablet'][1 + dev % 4],
    ['Chrome', 'Safari', 'Firefox', 'Edge'][1 + dev % 4],
    ['Windows', 'iOS', 'Android'][1 + dev % 3],
    ['DE', 'AT', 'CH', 'FR', 'US'][1 + dev % 5], ['Berlin', 'Wien', 'Zürich', 'Paris'][1 + dev % 4],
    'de-DE', '1920x1080',
    if(ev = 'purchase', concat('o-', toString(number)), ''),
    if(ev = 'purchase', toDecimal64(19.99 * (1 + rand(6) % 5), 4), toDecimal64(0, 4)),
    if(ev = 'purchase', 'EUR', ''),
    if(ev IN ('purchase', 'add_to_cart'),
       [(prod, concat('Product ', prod), 'shoes', 'acme', 'red', toDecimal64(19.99, 4),
         toUInt32(1 + rand(7) % 3))], []),
    map('ab', ['a', 'b'][1 + rand(8) % 2], 'page_type', 'product')
FROM (SELECT number,
        -- event names and products skewed as in a shop: most hits are page views, a few
        -- products get most of them
        ['page_view', 'page_view', 'page_view', 'page_view', 'page_view', 'page_view',
         'view_item', 'view_item', 'add_to_cart', 'purchase'][1 + rand(9) % 10] AS ev,
        toString(toUInt32(pow(rand(10) / 4294967295, 3) * 5000)) AS prod,
        rand(11) % 200000 AS dev
      FROM numbers({start:UInt64}, {count:UInt64}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


EXPORT_QUERIES = ("SELECT max(memory_usage) FROM system.processes "
                  "WHERE Settings['log_comment'] LIKE 'tagwerk-stream:%' FORMAT TSV")
# Refreshes running now, and the seconds until the next one starts.
REFRESHES = ("SELECT countIf(status != 'Scheduled'), min(dateDiff('second', now(), "
             "next_refresh_time)) FROM system.view_refreshes FORMAT TSV")


def sql(data_dir: Path, text: str) -> str:
    info = json.loads((data_dir / "serve.json").read_text())
    return httpx.post(f"http://127.0.0.1:{info['sql_port']}/", content=text, timeout=5,
                      auth=(info["sql_user"], info["sql_password"])).text.strip()


def refreshes(data_dir: Path) -> tuple[int, int]:
    """(refreshes running, seconds until the next one)."""
    running, until = sql(data_dir, REFRESHES).split("\t")
    return int(running), int(until)


def wait_refresh(data_dir: Path, mode: str) -> None:
    """``avoid``: until a refresh has just finished; ``overlap``: until one is about to start."""
    for _ in range(1200):
        running, until = refreshes(data_dir)
        if not running and (until >= 45 if mode == "avoid" else until <= 2):
            return
        time.sleep(0.1)


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks of the process's threads by name: the engine's have names of their own,
    Python's are all ``python3``."""
    ticks: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    return ticks


class Sampler(threading.Thread):
    """Peak RSS of the collector, and peak memory of its export queries as the engine
    accounts it (the collector also runs other work, such as refreshable views, whose
    memory shows in its RSS)."""

    def __init__(self, pid: int, data_dir: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.query_peak, self.stop = pid, 0.0, 0.0, threading.Event()
        self.data_dir, self.refreshed = data_dir, False

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            try:
                used = sql(self.data_dir, EXPORT_QUERIES)
                self.query_peak = max(self.query_peak, int(used or 0) / 2**20)
                self.refreshed |= refreshes(self.data_dir)[0] > 0
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)


def start(data_dir: Path, cores: int = 0) -> tuple[subprocess.Popen, str, int]:
    port, sql_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "collector", "serve", "--port", str(port), "--sql-port",
           str(sql_port), "--data-dir", str(data_dir), "--no-demo", "--log-level", "warning"]
    pin = None
    if cores:  # the collector alone on the last `cores` CPUs; the client keeps the others
        cpus = sorted(os.sched_getaffinity(0))[-cores:]
        pin = lambda: os.sched_setaffinity(0, cpus)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, preexec_fn=pin)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base, sql_port
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("collector did not start")


def tagwerk(data_dir: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "collector", *args, "--data-dir",
                           str(data_dir)], check=True, capture_output=True, text=True).stdout


def generate(data_dir: Path, rows: int) -> None:
    info = json.loads((data_dir / "serve.json").read_text())
    url = f"http://127.0.0.1:{info['sql_port']}/"
    auth = (info["sql_user"], info["sql_password"])
    for start_at in range(0, rows, CHUNK):
        count = min(CHUNK, rows - start_at)
        response = httpx.post(url, content=GENERATE.encode(), auth=auth, timeout=600,
                              params={"param_start": start_at, "param_count": count})
        response.raise_for_status()


def export_all(base: str, key: str, fmt: str, limit: int) -> tuple[int, float, int]:
    """(rows, seconds, calls) for exporting everything by following the cursor.

    The client reads each answer into one reused buffer (http.client decodes the chunked
    body straight into it), ~0.5 us of CPU a row: it shares the machine's cores with the
    collector, and httpx's chunk parsing cost ~2.8 us a row (0.43 cores at 148k rows/s),
    more than half the collector's own ~4.8 us, which capped NDJSON near 225k rows/s."""
    rows = calls = 0
    since = None
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    began = time.monotonic()
    try:
        while True:
            query = {"format": fmt, **({"limit": str(limit)} if limit else {}),
                     **({"since": since} if since else {})}
            connection.request("GET", f"/api/v1/sites/{SITE}/export?{urlencode(query)}",
                               headers={"Authorization": f"Bearer {key}"})
            answer = connection.getresponse()
            if answer.status != 200:
                raise RuntimeError(f"export answered {answer.status}: {answer.read()[:200]!r}")
            calls += 1
            body = io.BytesIO()
            while n := answer.readinto(view):
                if fmt == "ndjson":
                    rows += buffer.count(b"\n", 0, n)
                else:
                    body.write(view[:n])
            if fmt != "ndjson":
                rows += pq.ParquetFile(body).metadata.num_rows
            since = answer.headers["tagwerk-cursor"]
            if answer.headers["tagwerk-more"] == "false":
                break
    finally:
        connection.close()
    return rows, time.monotonic() - began, calls


def stream_all(base: str, key: str, expected: int) -> float:
    """Seconds for the live stream to catch up from the site's first row to its last: every
    row after the cursor of an answer of one row, on one connection (``--stream``)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        connection.request("GET", f"/api/v1/sites/{SITE}/export?limit=1",
                           headers={"Authorization": f"Bearer {key}"})
        first = connection.getresponse()
        first.read()
        since = first.headers["tagwerk-cursor"]
        began = time.monotonic()
        connection.request("GET", f"/api/v1/sites/{SITE}/stream?since={since}",
                           headers={"Authorization": f"Bearer {key}"})
        answer = connection.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"stream answered {answer.status}: {answer.read()[:200]!r}")
        rows = 0
        while rows < expected - 1:
            line = answer.readline()
            if not line:
                raise RuntimeError(f"the stream ended after {rows:,} rows")
            rows += line.startswith(b"id: ")
        return time.monotonic() - began
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=0,
                        help="rows per answer (0: send none, the endpoint's default)")
    parser.add_argument("--refresh", choices=("avoid", "overlap"), default="avoid",
                        help="start each run right after a pair-view refresh, or just before")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--data-dir", type=Path, help="use (and keep) this data directory; "
                        "rows generated there by an earlier run are reused")
    parser.add_argument("--cores", type=int, default=0,
                        help="pin the collector to this many CPUs (0: no pinning)")
    parser.add_argument("--idle", type=float, default=65.0, help="seconds of RSS sampling "
                        "without exports first, for reference (0: none)")
    parser.add_argument("--stream", action="store_true", help="also time the live stream's "
                        "catch-up from the first row, against the NDJSON export's rate")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="tagwerk-export-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    saved = data_dir / "bench-read-key"
    proc, base, _ = start(data_dir, args.cores)
    try:
        if saved.exists():
            key = saved.read_text()
            stored = int(sql(data_dir, "SELECT count() FROM tagwerk.events FORMAT TSV"))
            if stored != args.rows:
                raise RuntimeError(f"{data_dir} holds {stored:,} rows, not --rows {args.rows:,}")
            print(f"reusing {stored:,} rows in {data_dir}", flush=True)
        else:
            keys = tagwerk(data_dir, "site", "create", SITE)
            key = re.search(r"read key:\s+(\S+)", keys).group(1)
            began = time.monotonic()
            generate(data_dir, args.rows)
            print(f"generated {args.rows:,} rows in {time.monotonic() - began:.1f} s "
                  f"(collector RSS {rss_mb(proc.pid):.0f} MB)", flush=True)
            if args.data_dir:
                saved.write_text(key)
        if args.idle:  # the collector's own drift without exports, for reference
            before = rss_mb(proc.pid)
            sampler = Sampler(proc.pid, data_dir)
            sampler.start()
            time.sleep(args.idle)
            sampler.stop.set()
            sampler.join()
            print(f"idle {args.idle:.0f} s: RSS {before:.0f} MB -> peak {sampler.peak:.0f} MB "
                  f"(+{sampler.peak - before:.0f} MB)", flush=True)
        results: dict[str, list[float]] = {"ndjson": [], "parquet": []}
        growth: dict[str, list[tuple[float, bool]]] = {"ndjson": [], "parquet": []}
        for run in range(1, args.runs + 1):
            for fmt in ("ndjson", "parquet"):
                wait_refresh(data_dir, args.refresh)
                before = rss_mb(proc.pid)
                sampler = Sampler(proc.pid, data_dir)
                sampler.start()
                ticks, client = thread_ticks(proc.pid), os.times()
                rows, seconds, calls = export_all(base, key, fmt, args.limit)
                client_cpu = sum(os.times()[:2]) - sum(client[:2])
                ticks_after = thread_ticks(proc.pid)
                sampler.stop.set()
                sampler.join()
                hz = os.sysconf("SC_CLK_TCK")
                used = {name: (n - ticks.get(name, 0)) / hz / seconds
                        for name, n in ticks_after.items()}
                python = used.pop("python3", 0.0)
                if rows != args.rows:
                    raise RuntimeError(f"{fmt}: exported {rows:,} rows, expected {args.rows:,}")
                rate = rows / seconds
                results[fmt].append(rate)
                growth[fmt].append((sampler.peak - before, sampler.refreshed))
                print(f"run {run} {fmt:8} {rows:,} rows in {seconds:.1f} s ({calls} calls): "
                      f"{rate:,.0f} rows/s = {rate / GOAL_ROWS:.2f}x goal; RSS {before:.0f} MB "
                      f"-> peak {sampler.peak:.0f} MB (+{sampler.peak - before:.0f} MB), "
                      f"refresh: {'yes' if sampler.refreshed else 'no'}; export query peak "
                      f"{sampler.query_peak:.0f} MB; CPU engine {sum(used.values()):.2f} + "
                      f"Python {python:.2f} cores, client {client_cpu / seconds:.2f}",
                      flush=True)
            if args.stream:
                wait_refresh(data_dir, args.refresh)
                before = rss_mb(proc.pid)
                sampler = Sampler(proc.pid, data_dir)
                sampler.start()
                seconds = stream_all(base, key, args.rows)
                sampler.stop.set()
                sampler.join()
                rate = args.rows / seconds
                results.setdefault("stream", []).append(rate)
                print(f"run {run} stream   catch-up of {args.rows:,} rows in {seconds:.1f} s: "
                      f"{rate:,.0f} rows/s = {rate / results['ndjson'][-1]:.2f}x this run's "
                      f"NDJSON export; RSS {before:.0f} MB -> peak {sampler.peak:.0f} MB "
                      f"(+{sampler.peak - before:.0f} MB), refresh: "
                      f"{'yes' if sampler.refreshed else 'no'}", flush=True)
        for fmt, rates in results.items():
            if fmt == "stream":
                median = statistics.median(rates)
                print(f"median stream   {median:,.0f} rows/s = "
                      f"{median / statistics.median(results['ndjson']):.2f}x the NDJSON export")
                continue
            median = statistics.median(rates)
            apart = {flag: [mb for mb, refreshed in growth[fmt] if refreshed == flag]
                     for flag in (False, True)}
            rss = "; ".join(f"{label}: max {max(apart[flag]):.0f} MB ({len(apart[flag])} runs)"
                            for flag, label in ((False, "without a refresh"),
                                                (True, "with a refresh")) if apart[flag])
            print(f"median {fmt:8} {median:,.0f} rows/s = {median / GOAL_ROWS:.2f}x the "
                  f"{GOAL_ROWS:,} rows/s goal; RSS growth {rss} (goal < {GOAL_MB} MB)")
    finally:
        proc.terminate()
        proc.wait(30)
        if not args.keep and not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
