"""One small storage interface over ClickHouse, embedded (chDB) or a server (HTTP)."""

from __future__ import annotations

from collector.storage.base import StorageError, StorageUnavailable, Store

__all__ = ["Store", "StorageError", "StorageUnavailable", "open_store"]


def open_store(clickhouse_url: str | None, data_dir: str) -> Store:
    """The embedded engine under ``data_dir`` unless a server URL is given."""
    if clickhouse_url:
        from collector.storage.server import ServerStore

        return ServerStore(clickhouse_url)
    from collector.storage.embedded import EmbeddedStore

    return EmbeddedStore(data_dir)
