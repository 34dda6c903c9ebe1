"""Prometheus text-format metrics, kept in plain Python objects (the GIL makes += safe enough
for counters that only ever grow)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *label_values: str, by: float = 1) -> None:
        self.values[label_values] += by

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self.values and not self.labels:
            out.append(f"{self.name} 0")
        for key, value in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labels, key)} {value:g}")
        return out


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge",
                f"{self.name} {self.read():g}"]


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        running += self.counts[-1]
        out += [f'{self.name}_bucket{{le="+Inf"}} {running}',
                f"{self.name}_sum {self.sum:g}", f"{self.name}_count {running}"]
        return out


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    pairs = (f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + ",".join(pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.hits_accepted = Counter(
            "tagwerk_hits_accepted_total", "Events acknowledged (on disk).", ("endpoint",))
        self.hits_rejected = Counter(
            "tagwerk_hits_rejected_total", "Requests refused, by reason.", ("endpoint", "reason"))
        self.bots_dropped = Counter(
            "tagwerk_bots_dropped_total", "Bot hits dropped by a site's setting.")
        self.consent_dropped = Counter(
            "tagwerk_consent_dropped_total",
            "Web hits without analytics consent dropped by a site's setting.")
        self.hits_without_client = Counter(
            "tagwerk_browser_hits_without_client_total",
            "Browser hits from an address that is not public (a proxy not declared in "
            "--trusted-proxies?): no client, so the public lists count them by device.")
        self.erased_dropped = Counter(
            "tagwerk_erased_dropped_total",
            "Hits dropped because they name an erased person's identifier.")
        self.rows_inserted = Counter(
            "tagwerk_rows_inserted_total", "Rows inserted into ClickHouse.")
        self.duplicates_dropped = Counter(
            "tagwerk_duplicates_dropped_total", "Repeated event_ids not inserted again.")
        self.rows_unstorable = Counter(
            "tagwerk_rows_unstorable_total",
            "Spooled rows ClickHouse refused to parse, left out of their batch (logged).")
        self.flush_failures = Counter(
            "tagwerk_flush_failures_total", "Inserts into ClickHouse that failed (retried).")
        self.flush_seconds = Histogram(
            "tagwerk_flush_seconds", "Time to insert one batch into ClickHouse.",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.hits_accepted, self.hits_rejected, self.bots_dropped,
                       self.consent_dropped, self.hits_without_client, self.erased_dropped,
                       self.rows_inserted, self.duplicates_dropped, self.rows_unstorable,
                       self.flush_failures,
                       self.flush_seconds, *self.gauges):
            lines += metric.render()
        return "\n".join(lines) + "\n"
