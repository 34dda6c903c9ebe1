"""tagwerk collector: first-party tracking hits into ClickHouse."""

__version__ = "0.1.0"
