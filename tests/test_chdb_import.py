"""chDB is loaded without pyarrow and numpy (collector/storage/chdb_import.py), which stay
importable for the rest of the process."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import collector.service, collector.cli
print(sorted(m for m in ("pyarrow", "numpy", "pandas") if m in sys.modules))
import pyarrow
print(pyarrow.__name__)
"""


def test_the_collector_loads_chdb_without_pyarrow_and_pyarrow_stays_importable():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split("\n")
    assert out[:2] == ["[]", "pyarrow"], out
