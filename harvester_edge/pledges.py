"""Pledges: the cores a queue is promised to run (pledged_cores) and how much of it was used.

In a WORK_SHORTAGE (the central service says it has less work than the resources: central/shortage.py) the
submitter keeps a pledged queue's live cores (queued + running workers, nodes x cores_per_node) within the pledge
and leaves opportunistic queues alone; `status` and the monitor show cores in use and the core-hours of the last
day against the pledge (pledged_cores x 24 h).
"""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple

from harvester_edge.config import QueueConfig, SiteConfig
from harvester_edge.states import WORKER_WAITING, WorkerState
from harvester_edge.store import meta, queues, workers

DAY = 86400.0
_WAITING = {s.value for s in WORKER_WAITING}


def shortage_known(conn: sqlite3.Connection) -> bool:
    """The central service's last answer about a WORK_SHORTAGE (never asked: no shortage)."""
    last = meta.work_shortage(conn)
    return bool(last and last[0])


def cores_budget(conn: sqlite3.Connection, queue: QueueConfig, shortage: bool) -> int | None:
    """How many more cores the queue may start now: None (no limit) unless a shortage caps it at its pledge."""
    if not shortage or queue.pledged_cores is None:
        return None
    live = sum(n for (q, _), n in workers.live_nodes(conn).items() if q == queue.name)
    return max(0, queue.pledged_cores - live * queue.cores_per_node)


class QueueFacts(NamedTuple):
    name: str
    cores_per_node: int
    pledged_cores: int | None
    opportunistic: bool


def facts_of_config(config: SiteConfig) -> list[QueueFacts]:
    return [QueueFacts(q.name, q.cores_per_node, q.pledged_cores, q.opportunistic) for q in config.queues]


def facts_of_db(conn: sqlite3.Connection) -> list[QueueFacts]:
    """The queues as the daemon last synced them from the config (the monitor has no config)."""
    return [QueueFacts(r[0], int(r[1]), r[2], bool(r[3])) for r in queues.pledges(conn)]


def usage(conn: sqlite3.Connection, queue_facts: list[QueueFacts], now: float) -> dict[str, Any]:
    """Per queue: cores running and waiting, core-hours of the last day, the pledge; and the shortage flag."""
    live = workers.live_nodes(conn)
    node_seconds = workers.node_seconds_since(conn, now - DAY, now)
    core_seconds = {q.name: node_seconds.get(q.name, 0.0) * q.cores_per_node for q in queue_facts}
    queues = []
    for q in queue_facts:
        running = live.get((q.name, WorkerState.RUNNING.value), 0) * q.cores_per_node
        waiting = sum(n for (name, state), n in live.items() if name == q.name and state in _WAITING)
        used = core_seconds.get(q.name, 0.0) / 3600
        pledge_hours = None if q.pledged_cores is None else q.pledged_cores * DAY / 3600
        queues.append(
            {
                "queue": q.name,
                "opportunistic": q.opportunistic,
                "pledged_cores": q.pledged_cores,
                "cores_running": running,
                "cores_waiting": waiting * q.cores_per_node,
                "core_hours_24h": round(used, 3),
                "pledged_core_hours_24h": pledge_hours,
                "pledge_used_pct": None if not pledge_hours else round(100 * used / pledge_hours, 1),
            }
        )
    last = meta.work_shortage(conn)
    return {
        "work_shortage": bool(last and last[0]),
        "work_shortage_checked": None if last is None else last[1],
        "queues": queues,
    }
