"""User-Agent classification costs: the request's path and the flusher's.

Prints the cost of a cache hit and of a miss on the request's critical path (the guess, with
its pending entry), both in µs per call; the accurate classification's cost (ms, in the
flusher, off the request path); and the accuracy on the vendored corpora
(tests/useragent_corpus). Run: ``python3 bench/useragent.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.ingest import uarules, useragent  # noqa: E402
from collector.ingest.useragent import parse_agent, request_agent  # noqa: E402
from tests.test_useragent import accuracy, crawlers, devices, report  # noqa: E402

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")


def per_call_us(fn, args: list[str], repeat: int = 5) -> float:
    """Median over ``repeat`` rounds of the mean µs per call over ``args``."""
    rounds = []
    for _ in range(repeat):
        began = time.perf_counter()
        for arg in args:
            fn(arg)
        rounds.append((time.perf_counter() - began) / len(args) * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the corpus accuracy")
    args = parser.parse_args()
    uarules.warm_up()

    parse_agent(CHROME)
    hit = per_call_us(request_agent, [CHROME] * 100_000)
    print(f"cache hit (request_agent, cached UA)          {hit:8.2f} µs")

    # A miss: distinct UAs never seen, each answered with a guess and a pending entry.
    fresh = [f"{CHROME} build/{i}" for i in range(20_000)]
    useragent._pending = useragent._Pending(useragent.MAX_PENDING)
    began = time.perf_counter()
    for ua in fresh:
        request_agent(ua)
    miss = (time.perf_counter() - began) / len(fresh) * 1e6
    print(f"miss on the request path (guess + pending)    {miss:8.2f} µs  (goal < 100 µs)")

    sample = ([ua for ua, _ in devices()[::10]] + crawlers()[::10]
              + crawlers("crawlerdetect-crawlers")[::10])
    began = time.perf_counter()
    for ua in sample:
        useragent._classify(ua[: useragent.MAX_UA_LENGTH])
    accurate = (time.perf_counter() - began) / len(sample) * 1e3
    print(f"accurate classification (flusher, off path)   {accurate:8.2f} ms  "
          f"over {len(sample)} corpus UAs")

    if not args.quick:
        print(f"accuracy, parse_agent: {report(accuracy())}")
        print(f"accuracy, guess alone: {report(accuracy(useragent.guess))}")


if __name__ == "__main__":
    main()
