"""Containers: a site's tags, triggers, variables and consent settings as one JSON document
(js_snippet/DESIGN.md, section 1), validated here, versioned in ClickHouse.

A site has one draft; ``publish`` freezes it into version N+1 and makes it live;
``rollback N`` makes version N live again. Every publish and rollback is a row of the
release history, and the live version is the latest release. A site that has published
nothing yet is served its draft (or the default container), so a new site works at once.
"""

from __future__ import annotations

from collector.containers.document import (
    DEFAULT_TEXTS,
    container_policy_hash,
    default_container,
    normalize,
    resolved_tag_path,
)
from collector.containers.errors import (
    ContainerError,
    NotFound,
    PreconditionFailed,
)
from collector.containers.schema import (
    MAX_DOCUMENT_BYTES,
    MAX_VERSION,
)
from collector.containers.store import (
    Containers,
    Draft,
    Live,
    Previews,
    parse_if_match,
)
from collector.containers.validate import (
    check,
    validate,
)

__all__ = [
    "ContainerError",
    "Containers",
    "DEFAULT_TEXTS",
    "Draft",
    "Live",
    "MAX_DOCUMENT_BYTES",
    "MAX_VERSION",
    "NotFound",
    "PreconditionFailed",
    "Previews",
    "check",
    "container_policy_hash",
    "default_container",
    "normalize",
    "parse_if_match",
    "resolved_tag_path",
    "validate",
]
