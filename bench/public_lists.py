"""Browser-safe product lists (``/t/{site}/recommend/...``): what proving their persons costs.

A public top or trending item with at most ``products.PROVED_UP_TO`` persons behind it (user
ids, else device ids, as the hourly aggregate counts them) is listed only once the identity
graph resolves its hits to two persons (``products.proved``: the item's keys read from the
window's events, then resolved); a co-view pair, once the sessions it keeps (up to 11)
resolve to two persons (``products.proved_pairs``). This prints, per list, p50/p99
of a single client asking the public list and the keyed list of the same ask (which proves
nothing), every ask a new one (limits 24 down to 1: nothing is answered from the cache),
and the ratio of the two.

Runs on ``bench/recommend.py``'s data (10M events by default), made in ``--data-dir`` if that
is empty, reused otherwise. The public lists are rate-limited per client address (10 a
second): the requests are paced below that. Run:
``python3 bench/public_lists.py --data-dir DIR [--events N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recommend import SITE, Server, generate  # noqa: E402

LISTS = {
    "top views 24h": "top?metric=views&window=24h",
    "top views 7d": "top?metric=views&window=7d",
    "top purchases 1h": "top?metric=purchases&window=1h",
    "top purchases 24h": "top?metric=purchases&window=24h",
    "top revenue 24h": "top?metric=revenue&window=24h",
    "trending 1h/7d": "trending?window=1h&baseline=7d",
}
# "Also viewed" of the most viewed product and of the 100th (each candidate pair's sessions
# are resolved, ``products.proved_pairs``: up to 11 each for the first's).
RELATED = {"related co_view #1": 0, "related co_view #100": 99}
PACE = 0.12  # seconds between public requests: under the 10 a second per address


def timed(url: str, headers: dict[str, str]) -> tuple[float, int]:
    """Milliseconds of one request, and how many items it answered."""
    began = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        body = json.loads(r.read())
    return (time.perf_counter() - began) * 1000, len(body["items"])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=500_000)
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--products", type=int, default=5_000)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    saved = data_dir / "bench-keys.json"
    if saved.exists():
        keys = json.loads(saved.read_text())
    elif any(data_dir.iterdir()):
        raise SystemExit(f"{data_dir} holds something else than the bench's data")
    else:
        keys = generate(data_dir, args)
        saved.write_text(json.dumps(keys))
    server = Server(data_dir)
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"{server.base}/api/v1/sites/{SITE}/products/top?window=7d&limit=100",
                headers={"Authorization": f"Bearer {keys['read']}"}), timeout=30) as r:
            ranked = [item["product_id"] for item in json.loads(r.read())["items"]]
        lists = {name: (path, path) for name, path in LISTS.items()}
        lists.update({name: (f"related/{ranked[rank]}?kind=co_view",
                             f"{ranked[rank]}/related?kind=co_view")
                      for name, rank in RELATED.items()})
        print(f"{'list':20} {'public p50':>10} {'p99':>7} {'keyed p50':>10} {'p99':>7} "
              f"{'p50 ratio':>9}  items (public, keyed)")
        for name, (path, keyed_path) in lists.items():
            public, keyed, counts = [], [], []
            for limit in range(24, 0, -1):
                ms, shown = timed(f"{server.base}/t/{SITE}/recommend/{path}&limit={limit}",
                                  {"Origin": "https://shop.example"})
                public.append(ms)
                ms_keyed, listed = timed(
                    f"{server.base}/api/v1/sites/{SITE}/products/{keyed_path}&limit={limit}",
                    {"Authorization": f"Bearer {keys['read']}"})
                keyed.append(ms_keyed)
                counts.append((shown, listed))
                time.sleep(PACE)
            print(f"{name:20} {statistics.median(public):10.1f} {pct(public, 99):7.1f} "
                  f"{statistics.median(keyed):10.1f} {pct(keyed, 99):7.1f} "
                  f"{statistics.median(public) / statistics.median(keyed):9.2f}  "
                  f"{counts[0]}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
