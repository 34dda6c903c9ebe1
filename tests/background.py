"""Slow, self-contained work of a few tests, begun when the session starts, in processes of
the lowest priority (``nice 19``), so that it runs on the core the suite leaves idle (the
suite keeps one of two busy on average) and takes no time of the tests it runs beside.
A test asks for the answer when it runs; a test run alone waits for it.

A job is a function of a test module returning data orjson can write, run as
``python -m tests.background MODULE FUNCTION OUT [TESTS]``; given, TESTS (JSON) names the
module's collected tests, and the function takes them (a job that serves many tests does
only the work of those selected).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

# The jobs, each begun when a test of its module is collected: (module, function).
JOBS = {
    "useragent corpora": ("tests.test_useragent", "parse_corpora"),
    "zones probe": ("tests.test_sql_zones", "probe_the_engine"),
    "migration upgrades": ("tests.test_migrations", "run_upgrades"),
}
# The jobs that are told which of their module's tests were collected.
SELECTIVE = {"migration upgrades"}
# What a job may take, begun at the session's start and run on idle time.
TIMEOUT = 1200
ROOT = Path(__file__).resolve().parent.parent  # where ``tests`` imports from

_running: dict[str, tuple[subprocess.Popen, Path]] = {}
_scratch: list[Path] = []


def _lowest_priority() -> None:
    os.nice(19)


def start(job: str, tests: list[str] | None = None) -> None:
    """Begin ``job`` unless it runs: for ``tests`` of its module, or for all of them."""
    if job in _running:
        return
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="tagwerk-background-")))
    module, function = JOBS[job]
    out = _scratch[0] / f"{function}.json"
    told = [orjson.dumps(tests).decode()] if tests is not None and job in SELECTIVE else []
    # A session of its own, so that stop() ends the processes it starts too; and their
    # scratch files under ours (TMPDIR), which stop() removes even when a job was killed.
    with open(out.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.background", module, function,
                                 str(out), *told], stdout=log, stderr=log, cwd=ROOT,
                                env={**os.environ, "TMPDIR": str(_scratch[0])},
                                preexec_fn=_lowest_priority, start_new_session=True)
    _running[job] = (proc, out)


def start_for(collected: dict[str, list[str]]) -> None:
    """Begin the jobs of the collected tests (their names by module)."""
    for job, (module, _) in JOBS.items():
        if module in collected:
            start(job, collected[module])


def result(job: str) -> Any:
    """The job's answer, once it is done."""
    start(job)
    proc, out = _running[job]
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        _end(proc)  # (then each later call fails at once, as the job failed)
        raise AssertionError(f"{job} took more than {TIMEOUT} s") from None
    log = out.with_suffix(".log").read_text(errors="replace")
    assert proc.returncode == 0, f"{job} failed: {log[-3000:]}"
    return orjson.loads(out.read_bytes())


def stop() -> None:
    """End the jobs still running (a session cut short) and remove their answers."""
    for proc, _ in _running.values():
        _end(proc)
    _running.clear()
    for path in _scratch:
        shutil.rmtree(path, ignore_errors=True)
    _scratch.clear()


def _end(proc: subprocess.Popen) -> None:
    """End a job and whatever it started (its session), unless it ended."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


if __name__ == "__main__":
    module_name, function_name, out_path, *tests = sys.argv[1:]
    answer = getattr(importlib.import_module(module_name), function_name)(
        *(orjson.loads(told) for told in tests))
    Path(out_path).write_bytes(orjson.dumps(answer))
