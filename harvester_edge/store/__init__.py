"""SQLite bookkeeping: open_store() and the row verbs (claim, transition, update, release)."""

from harvester_edge.store.db import SchemaTooNew, Store, open_store
from harvester_edge.store.rows import claim, release, release_all, transition, transition_rows, update

__all__ = [
    "SchemaTooNew",
    "Store",
    "claim",
    "open_store",
    "release",
    "release_all",
    "transition",
    "transition_rows",
    "update",
]
