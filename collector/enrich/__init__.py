"""Enrichment: what a hit's request tells beyond the hit's own fields.

- ``geo``: where the client's address is, from a MaxMind database of the City layout.
- ``useragent``: device class and bot flag from the User-Agent, cached; a miss is answered
  at once with a guess and made accurate in the flusher's thread, off the request's path
  (``uarules``: Matomo's Device Detector rules).
- ``client_hash``: the client's network (an IPv4 address, an IPv6 /48) as a hash that the
  day's salt makes meaningless once the day is over: the public lists count clients.

Ingestion's ``accept`` step uses them; the service builds them (the database, the resolver
the flusher asks, the shared salts), which is why they are a package of their own and not
ingestion's: the service sits below every endpoint's package and imports none of them.
"""
