"""User-Agent classification costs: the request's path and the flusher's.

Prints the cost of a cache hit and of a miss on the request's critical path (the guess, with
its pending entry), both in µs of CPU per call, as a browser endpoint asks (``/collect``,
``/p.gif``: an unnamed program's hit makes a bot's answer) and as the batch API does; the
accurate classification's cost (ms of CPU, in the flusher, off the request path); and the
accuracy on the vendored corpora (tests/useragent_corpus). CPU time, not wall-clock: the
machine is shared. Run: ``python3 bench/useragent.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.enrich import uarules, useragent  # noqa: E402
from collector.enrich.useragent import parse_agent, request_agent  # noqa: E402
from tests.test_useragent import (  # noqa: E402
    accuracy,
    crawlers,
    devices,
    guess_anywhere,
    report,
)

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")
PROGRAM = "Monit/5.25.2"  # Matomo's rules recognise nothing in it


def per_call_us(fn, args: list[str], browser_endpoint: bool, repeat: int = 5) -> float:
    """Median over ``repeat`` rounds of the mean µs of CPU per call over ``args``."""
    rounds = []
    for _ in range(repeat):
        began = time.process_time()
        for arg in args:
            fn(arg, browser_endpoint)
        rounds.append((time.process_time() - began) / len(args) * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the corpus accuracy")
    args = parser.parse_args()
    uarules.warm_up()

    parse_agent(CHROME)
    parse_agent(PROGRAM)
    for where, browser_endpoint in (("browser endpoint", True), ("batch", False)):
        hit = per_call_us(request_agent, [CHROME] * 100_000, browser_endpoint)
        print(f"cache hit, {where:16} (browser)      {hit:8.2f} µs")
    hit = per_call_us(request_agent, [PROGRAM] * 100_000, True)
    print(f"cache hit, browser endpoint (unnamed prog.) {hit:8.2f} µs")

    # A miss: distinct UAs never seen, each answered with a guess and a pending entry.
    for where, browser_endpoint in (("browser endpoint", True), ("batch", False)):
        fresh = [f"{CHROME} build/{i} {where}" for i in range(20_000)]
        useragent._pending = useragent._Pending(useragent.MAX_PENDING)
        miss = per_call_us(request_agent, fresh, browser_endpoint, repeat=1)
        print(f"miss, {where:16} (guess + pending) {miss:8.2f} µs  (goal < 100 µs)")

    sample = ([ua for ua, _ in devices()[::10]] + crawlers()[::10]
              + crawlers("crawlerdetect-crawlers")[::10])
    began = time.process_time()
    for ua in sample:
        useragent._classify(ua[: useragent.MAX_UA_LENGTH])
    accurate = (time.process_time() - began) / len(sample) * 1e3
    print(f"accurate classification (flusher, off path) {accurate:8.2f} ms  "
          f"over {len(sample)} corpus UAs")

    if not args.quick:
        print(f"accuracy, parse_agent: {report(accuracy())}")
        print(f"accuracy, guess alone: {report(accuracy(guess_anywhere))}")


if __name__ == "__main__":
    main()
