"""Operator actions on a site's bookkeeping, safe while the daemon runs (they only set flags the agents act on)."""

from __future__ import annotations

import time

from harvester_edge.config import SiteConfig
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.states import WORKER_LIVE
from harvester_edge.store import open_store, workers
from harvester_edge.store import queues as queue_rows

KILLABLE = tuple(s.value for s in WORKER_LIVE)


def set_draining(config: SiteConfig, queues: list[str] | None, draining: bool) -> list[str]:
    """Stop (or resume) new fetches and submissions on the queues; running workers go on to their end."""
    names = queues or [q.name for q in config.queues]
    for name in names:
        config.queue(name)  # raises with the known names if there is no such queue
    store = open_store(config.db_path, config.daemon.on_network_fs)
    try:
        with store.write() as conn:
            for name in names:
                queue_rows.upsert(conn, name, config.queue(name).batch, time.time(), draining=draining)
    finally:
        store.close()
    return names


def request_kill(
    config: SiteConfig,
    *,
    worker_ids: list[int] | None = None,
    queue: str | None = None,
    state: str | None = None,
    panda_id: int | None = None,
    everything: bool = False,
) -> list[int]:
    """Flag matching unfinished workers for cancellation (the sweeper cancels them); returns their ids."""
    if not (worker_ids or queue or state or panda_id or everything):
        raise HarvesterEdgeError("kill-workers needs a filter (--id, --queue, --state, --job) or --all")
    if state is not None and state not in KILLABLE:
        raise HarvesterEdgeError(f"--state {state!r}: only unfinished workers can be killed: {', '.join(KILLABLE)}")
    if queue is not None:
        config.queue(queue)
    store = open_store(config.db_path, config.daemon.on_network_fs)
    try:
        with store.write() as conn:
            ids = workers.killable(conn, KILLABLE, worker_ids=worker_ids, queue=queue, state=state, panda_id=panda_id)
            workers.flag_killed_by_operator(conn, ids, time.time())
    finally:
        store.close()
    return ids
