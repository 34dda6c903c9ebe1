"""One small storage interface over ClickHouse, embedded (chDB) or a server (HTTP)."""

from __future__ import annotations

from collector.storage.base import StorageError, StorageUnavailable, Store, time_text

__all__ = ["Store", "StorageError", "StorageUnavailable", "open_store", "time_text"]


def open_store(clickhouse_url: str | None, data_dir: str, memory_limit: int | None = None) -> Store:
    """The embedded engine under ``data_dir`` unless a server URL is given. ``memory_limit``:
    the collector's, of which the embedded engine takes a share."""
    if clickhouse_url:
        from collector.storage.server import ServerStore

        return ServerStore(clickhouse_url)
    from collector.storage.embedded import EmbeddedStore

    return EmbeddedStore(data_dir, memory_limit)
