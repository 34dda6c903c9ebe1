"""chDB's connection module, imported without pyarrow.

chDB imports pyarrow (and numpy through it) at import whenever they are installed, for its
Arrow and DataFrame results, which tagwerk never asks for: 40 MB of resident memory and
0.15 s of every start. A ``None`` entry in ``sys.modules`` makes that import fail as if
pyarrow were absent, which chDB allows for (``chdb/state/sqlitelike.py``: pyarrow is
optional). The entry is removed once chDB is loaded, so that other code in the process (a
test reading an exported Parquet file) still imports pyarrow.
"""

from __future__ import annotations

import sys
from types import ModuleType


def _load() -> ModuleType:
    absent = "pyarrow" not in sys.modules
    if absent:
        sys.modules["pyarrow"] = None  # type: ignore[assignment]
    try:
        import chdb.state
    finally:
        if absent:
            del sys.modules["pyarrow"]
    return chdb.state


connect = _load().connect
