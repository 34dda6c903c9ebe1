"""The consent policy hash: what a person agreed to. When it changes, the banner asks again."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson


def policy_hash(
    purposes: Iterable[Mapping[str, Any]],
    policy_version: str,
    tags: Iterable[tuple[str, str]],
) -> str:
    """16 hex digits of SHA-256 over the purposes, the policy version and each (tag id,
    purpose) pair, in canonical JSON: adding a purpose or a tag, or moving a tag to another
    purpose, asks everyone again; editing a text does not (bump ``policy_version`` for that).
    """
    canonical = orjson.dumps(
        {
            "purposes": sorted(
                ({"id": p["id"], "required": bool(p.get("required", False))} for p in purposes),
                key=lambda p: p["id"],
            ),
            "version": policy_version,
            "tags": sorted([tag_id, purpose] for tag_id, purpose in tags),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()[:16]
