"""The read side: what tagwerk gives back (persons, recommendations, profiles, export,
stream, privacy operations), under ``/api/v1/sites/{site}/...`` with the site's keys.

``access`` checks keys and shapes errors, ``query`` parses query strings; one module per
endpoint family; their paths are in the collector's route table (``collector.routes``).
"""
