"""``tagwerk serve`` as a subprocess with its own data directory.

chDB allows one data path per process, so tests that need a store of their own, a crash
or a restart run the collector this way and query it through its ClickHouse HTTP port.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, *args: str, sql_port: int | None = None,
                 cwd: Path | None = None, demo_shoppers: bool = False,
                 open_files: tuple[int, int] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.open_files = open_files  # (soft, hard) limit of the process, else inherited
        self.cwd = cwd  # where it is started from: a relative data_dir is relative to it
        self.port = free_port()
        self.sql_port = free_port() if sql_port is None else sql_port
        # (the demo site's sample shoppers only where a test asks for them: they are rows)
        self.args = args if demo_shoppers else (*args, "--no-demo-shoppers")
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir.with_suffix(".log")

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, self.open_files)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "collector", "serve", "--port", str(self.port),
               "--sql-port", str(self.sql_port), "--data-dir", str(self.data_dir),
               "--log-level", "warning", *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=self.cwd,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         preexec_fn=self._limit if self.open_files else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"collector did not start: {self.log.read_text()[-3000:]}")

    def sql(self, query: str, **params: str) -> str:
        """Run a read-only query as ``default`` through the ClickHouse HTTP interface."""
        bound = {f"param_{k}": v for k, v in params.items()}
        response = httpx.post(f"http://127.0.0.1:{self.sql_port}/", content=query.encode(),
                              params=bound, timeout=30)
        response.raise_for_status()
        return response.text

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
