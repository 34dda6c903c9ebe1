"""The SQL port's connections: the HTTP limits of the collector's port (``web/limits.py``),
and at most ``MAX_CONNECTIONS`` open at once from all clients together.

The port serves a data team and its dashboards, not the internet, and its local clients
(loopback: ``default`` needs no password there) are not capped per client. 20,000
connections from two loopback addresses took every file descriptor of the process, and the
collector's port refused every hit while they lasted (re-probe 61).
"""

from __future__ import annotations

from collector.web.limits import LimitedProtocol

MAX_CONNECTIONS = 512


class SqlProtocol(LimitedProtocol):
    port_connections = MAX_CONNECTIONS
