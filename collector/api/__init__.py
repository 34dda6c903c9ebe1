"""The read side: what tagwerk gives back (persons, recommendations, profiles, export,
stream, privacy operations), under ``/api/v1/sites/{site}/...`` with the site's keys.

``access`` checks keys and shapes errors, ``query`` parses query strings; one module per
endpoint family; ``routes`` is the one table of them all.
"""
