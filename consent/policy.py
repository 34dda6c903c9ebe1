"""The consent policy hash: what a person agreed to. When it changes, the banner asks again."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

DEFAULT_LIFETIMES = (365, 182)  # days: a decision, a rejection (DESIGN.md section 3)


def policy_hash(
    purposes: Iterable[Mapping[str, Any]],
    policy_version: str,
    tags: Iterable[tuple[str, str]],
    lifetimes: tuple[int, int] = DEFAULT_LIFETIMES,
) -> str:
    """16 hex digits of SHA-256 over the purposes, the policy version, each (tag id,
    purpose) pair and the lifetimes (days) of a decision and of a rejection, in canonical
    JSON: adding a purpose or a tag, moving a tag to another purpose or changing a lifetime
    asks everyone again; editing a text does not (bump ``policy_version`` for that).

    The lifetimes are in the hash because a decision is valid while its cookie lives: the tag
    does not check the decision's time, the cookie's Max-Age does. A shorter lifetime must
    therefore ask again rather than trust cookies written for longer. They are left out at
    their defaults, so that the hashes of earlier versions stay as they were.
    """
    policy: dict[str, Any] = {
        "purposes": sorted(
            ({"id": p["id"], "required": bool(p.get("required", False))} for p in purposes),
            key=lambda p: p["id"],
        ),
        "version": policy_version,
        "tags": sorted([tag_id, purpose] for tag_id, purpose in tags),
    }
    if tuple(lifetimes) != DEFAULT_LIFETIMES:
        policy["lifetimes"] = list(lifetimes)
    canonical = orjson.dumps(policy, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]
