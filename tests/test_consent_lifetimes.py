"""The default lifetimes of a consent decision are consent.policy.DEFAULT_LIFETIMES in the
container's defaults, the collector's renewal of the cookie and the tag's config; the tag's
JavaScript, which has its own copy so that the config need not carry them, must agree."""

from __future__ import annotations

import re
from pathlib import Path

from collector.containers.schema import DEFAULT_CONSENT
from consent.policy import DEFAULT_LIFETIMES

CONSENT_JS = Path(__file__).parent.parent / "js_snippet" / "src" / "consent.js"


def test_the_tags_defaults_are_the_collectors():
    assert (DEFAULT_CONSENT["lifetime_days"], DEFAULT_CONSENT["rejection_lifetime_days"]) \
        == DEFAULT_LIFETIMES
    source = CONSENT_JS.read_text()
    # days(): "config.l || 365 : config.r || 182" (l, r: the config's lifetime keys)
    lifetime = re.findall(r"\.l\s*\|\|\s*(\d+)", source)
    rejection = re.findall(r"\.r\s*\|\|\s*(\d+)", source)
    assert lifetime and rejection, "consent.js: the default lifetimes were not found"
    assert {int(n) for n in lifetime} == {DEFAULT_LIFETIMES[0]}
    assert {int(n) for n in rejection} == {DEFAULT_LIFETIMES[1]}
