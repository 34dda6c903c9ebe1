"""One person across devices and channels: typed identifiers, the links between them, and
their resolution at query time (``clickhouse/0012_identity.sql``).

``graph``: who an identifier belongs to, and everything that belongs to a person;
``operations``: explicit merges and splits, audited and undoable; ``changes``: what the
stored rows changed, for answers kept in memory; ``copurchase_refresh``: bought-together
pairs recomputed after purchases and identity changes. What an identifier is and
which values are junk is ``collector.identifiers``: sites, ingestion and this package share
it.
"""
