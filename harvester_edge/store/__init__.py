"""SQLite bookkeeping: open_store() and the row verbs (claim, transition, update, release).

Every query on the bookkeeping database lives in this package, one module per table: queues, workers, jobs,
job_workers, ranges (event_ranges), outbox, history (state_history), meta; readonly.open_readonly() is the one
read-only open for the readers outside the daemon. The rest of the code calls their named functions.
"""

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
