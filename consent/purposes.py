"""Consent purposes. Sites may add their own; these four are built in."""

from __future__ import annotations

import re

NECESSARY = "necessary"
ANALYTICS = "analytics"
PERSONALIZATION = "personalization"
MARKETING = "marketing"
BUILT_IN = (NECESSARY, ANALYTICS, PERSONALIZATION, MARKETING)

PURPOSE_ID = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
