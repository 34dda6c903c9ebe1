"""Between a hit's 2xx and ClickHouse: the spool on disk and the flusher that empties it.

- ``disk``: the spool. An accepted request is one record, written (group commit, ``O_DSYNC``)
  before the collector answers 2xx; the checkpoint says what is flushed.
- ``flusher``: moves spooled records into ClickHouse in batches, exactly once (replays keep
  their deduplication tokens), with the accurate User-Agent class written in on the way.
- ``record``: the record format (``encode_record``: a metadata line, then the rows) and the
  tables a record may be for (``TABLES``, ``INSERTS``).

A hit's path ends here: ``collector.ingest`` appends a record to the spool, the flusher
inserts it into ``tagwerk.events`` (or ``tagwerk.consent_log``).
"""
