"""Messages for the central service, kept in the DB until it has taken them: see harvester_edge.store.outbox."""

from harvester_edge.store.outbox import KINDS, depth, enqueue, pending

__all__ = ["KINDS", "depth", "enqueue", "pending"]
