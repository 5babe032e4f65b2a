"""Operator actions on a site's bookkeeping, safe while the daemon runs (they only set flags the agents act on)."""

from __future__ import annotations

import time

from harvester_edge.config import SiteConfig
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.states import ACTIVE_WORKER_STATES, WorkerState
from harvester_edge.store import open_store

KILLABLE = tuple(s.value for s in (WorkerState.NEW, *ACTIVE_WORKER_STATES))


def set_draining(config: SiteConfig, queues: list[str] | None, draining: bool) -> list[str]:
    """Stop (or resume) new fetches and submissions on the queues; running workers go on to their end."""
    names = queues or [q.name for q in config.queues]
    for name in names:
        config.queue(name)  # raises with the known names if there is no such queue
    store = open_store(config.db_path, config.daemon.on_network_fs)
    try:
        with store.write() as conn:
            for name in names:
                batch = config.queue(name).batch
                conn.execute(
                    "INSERT INTO queues (name, batch, draining, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET draining = excluded.draining, "
                    "updated_at = excluded.updated_at",
                    (name, batch, int(draining), time.time()),
                )
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
    sql = f"SELECT id FROM workers WHERE state IN ({','.join('?' * len(KILLABLE))})"
    params: list = list(KILLABLE)
    if worker_ids:
        sql += f" AND id IN ({','.join('?' * len(worker_ids))})"
        params += worker_ids
    if queue:
        sql += " AND queue = ?"
        params.append(queue)
    if state:
        sql += " AND state = ?"
        params.append(state)
    if panda_id is not None:
        sql += " AND id IN (SELECT worker_id FROM job_workers WHERE panda_id = ?)"
        params.append(panda_id)
    store = open_store(config.db_path, config.daemon.on_network_fs)
    try:
        with store.write() as conn:
            ids = [r[0] for r in conn.execute(sql, params)]
            conn.executemany(
                "UPDATE workers SET kill_requested = 1, error = coalesce(error, 'killed by operator'), "
                "updated_at = ? WHERE id = ?",
                [(time.time(), i) for i in ids],
            )
    finally:
        store.close()
    return ids
