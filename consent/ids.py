"""The shapes of the two ids every consent decision carries, defined once for the cookie
(``cookie.py``), the log (``log.py``) and the hits (``collector/ingest/events.py``): the
decision's ``consent_id`` (32 hexadecimal digits, random, minted by the tag) and the hash of
the ``policy`` it was made under (16, ``policy.policy_hash``)."""

from __future__ import annotations

import re

CONSENT_ID_PATTERN = "[0-9a-fA-F]{32}"
POLICY_HASH_PATTERN = "[0-9a-fA-F]{16}"
# Use with fullmatch: "$" would allow a final "\n".
CONSENT_ID = re.compile(CONSENT_ID_PATTERN)
POLICY_HASH = re.compile(POLICY_HASH_PATTERN)
