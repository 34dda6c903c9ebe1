"""Privacy operations with the admin key: erase a person everywhere through every linked
identifier, and give a person everything stored about them.

``tombstones``: identifiers erased for good, dropped at ingestion; ``erase``: the erasure
itself; ``access``: the access request.
"""
