"""The keyed API under ``/api/v1/sites/{site}/...``: the read side (persons,
recommendations, profiles, export, stream), privacy operations, and editing the site's
container (``container``), each with the site's keys.

``access`` checks keys and shapes errors, ``query`` parses query strings; one module per
endpoint family; their paths are in the collector's route table (``collector.routes``).
"""
