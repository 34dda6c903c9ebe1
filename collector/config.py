"""Settings: command-line flags override ``TAGWERK_*`` environment variables override defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from collector.spool.disk import SEGMENT_SECONDS
from collector.storage.engine_config import parse_size
from collector.web.clientip import parse_networks


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./var")
    # None: the embedded engine (chDB) under data_dir/clickhouse.
    clickhouse_url: str | None = None
    # Render DDL for this ClickHouse cluster (ON CLUSTER, Replicated*, Distributed).
    cluster: str | None = None
    # The ClickHouse HTTP interface of the embedded store; port 0 turns it off.
    sql_host: str = "127.0.0.1"
    sql_port: int = 8123
    # JSON file of extra SQL users: {"name": {"password": "...", "readonly": true}}.
    sql_users_file: Path | None = None
    geoip_db: Path | None = None
    # The collector's memory (TAGWERK_MEMORY_LIMIT): 4G, 512M, or a fraction of the machine
    # (0.5); the embedded engine refuses allocations past its share of it. Empty: half the
    # machine (or of the cgroup's limit).
    memory_limit: str = ""
    # One query of a read-only SQL user: its memory (a size, as above) and seconds.
    sql_query_memory: str = "1G"
    sql_query_seconds: int = 60
    # The tag bundle directory (tag.js, banner.js...); None: the installed js_snippet/dist.
    tag_dir: Path | None = None
    trusted_proxies: str = ""
    # A batch goes to ClickHouse when this many bytes wait, or this long after the flusher
    # found hits waiting; with flush_stretch, as long as an insert takes when that is longer
    # (the core is short), up to 1 s (collector/spool/flusher.py).
    flush_bytes: int = 16 * 1024**2
    flush_interval_ms: int = 250
    flush_stretch: bool = True
    # Past this many unflushed bytes on disk the collector answers 503.
    spool_max_bytes: int = 2 * 1024**3
    spool_segment_bytes: int = 64 * 1024**2
    # A spool file older than this is finished (and deleted once flushed), whatever its size.
    spool_segment_seconds: float = SEGMENT_SECONDS
    # After a group commit of several hits, the spool waits this long to gather the next.
    spool_commit_delay_ms: float = 2.0
    # Co-purchase pairs are recomputed this many seconds at the earliest after purchases or
    # identities change (collector/identity/copurchase_refresh.py); 0: only by the view's
    # 10-minute schedule.
    copurchase_refresh_seconds: float = 10.0
    demo_site: bool = True
    # A new demo site gets a few sample shoppers' hits (collector/tag/demo_shoppers.py).
    demo_shoppers: bool = True
    # Profiles resolve who they are about, and look up their consent decisions, from a copy
    # of the identity links and decisions in the engine's memory (collector/identity/
    # link_index.py; ~150 MB per million identifiers, ~230 MB per million decisions): off,
    # from the tables (TAGWERK_IDENTITY_LINKS_IN_MEMORY=0).
    identity_links_in_memory: bool = True
    log_level: str = "info"
    # What erasure digests are keyed with (collector/privacy/key.py); only from the
    # environment (TAGWERK_PRIVACY_KEY), never a flag that `ps` would show. Empty: a key
    # made once in data_dir/privacy.key. Collectors sharing a ClickHouse share the key.
    privacy_key: str = field(default="", repr=False)
    networks: tuple = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.tag_dir is not None:
            self.tag_dir = Path(self.tag_dir)
        self.networks = parse_networks(self.trusted_proxies)

    @property
    def memory_limit_bytes(self) -> int | None:
        return parse_size(self.memory_limit) if self.memory_limit else None

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def chdb_dir(self) -> Path:
        return self.data_dir / "clickhouse"


_ENV_PREFIX = "TAGWERK_"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, then the given overrides (None means unset)."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name == "networks":
            continue
        raw = os.environ.get(_ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _coerce(f.name, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def _coerce(name: str, raw: str) -> Any:
    default = getattr(Settings, name, None)
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{_ENV_PREFIX}{name.upper()}: expected a boolean, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{_ENV_PREFIX}{name.upper()}: expected an integer") from None
    if isinstance(default, float):
        return float(raw)
    return raw or None if default is None else raw
