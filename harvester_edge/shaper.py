"""How big a worker should be: nodes and walltime from the work left and the queue's limits. Pure functions.

JEDI's sizing rule is the starting point: walltime >= seconds_per_event x events / (cores x efficiency) + base time.
A worker is made as small as the remaining work allows (short jobs start sooner in backfill), and as large as the
queue allows when there is more work than one worker can do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from harvester_edge.config import QueueConfig

EFFICIENCY = 0.9  # JEDI's default
BASE_TIME = 60  # seconds: pilot start-up, the last range's report, the drain margin


@dataclass(frozen=True)
class Shape:
    nodes: int
    walltime: int  # seconds
    events: int  # how many events this worker is expected to process

    @property
    def reason(self) -> str:
        return f"{self.nodes} node(s) x {self.walltime}s for ~{self.events} events"


def worker_capacity(nodes: int, ranks_per_node: int, seconds_left: float, seconds_per_event: float) -> int:
    """Events a worker can still process in `seconds_left`."""
    usable = max(0.0, seconds_left - BASE_TIME) * EFFICIENCY
    return int(nodes * ranks_per_node * usable / max(seconds_per_event, 1e-6))


def shape_worker(queue: QueueConfig, events_left: int, seconds_per_event: float,
                 idle_nodes: int | None = None) -> Shape | None:
    """The shape of one more worker for `events_left` uncovered events, or None when there is nothing to cover.

    `idle_nodes` (backfill): when at least nodes_min nodes are idle, the worker takes no more than those, so it
    can start now instead of waiting for a larger allocation; the walltime grows to cover the same work.
    """
    if events_left <= 0:
        return None
    spe = max(seconds_per_event, 1e-3)
    rank_seconds = events_left * spe / EFFICIENCY
    ranks = queue.ranks_per_node
    per_node_max = ranks * max(1, queue.walltime_max - BASE_TIME)
    nodes_max = queue.nodes_max
    if idle_nodes is not None and idle_nodes >= queue.nodes_min:
        nodes_max = min(nodes_max, idle_nodes)
    nodes = min(nodes_max, max(queue.nodes_min, math.ceil(rank_seconds / per_node_max)))
    walltime = math.ceil(rank_seconds / (nodes * ranks)) + BASE_TIME
    walltime = min(queue.walltime_max, max(queue.walltime_min, walltime))
    return Shape(nodes=nodes, walltime=walltime,
                 events=min(events_left, worker_capacity(nodes, ranks, walltime, spe)))


def queue_room(queue: QueueConfig, queued: int, running: int) -> int:
    """How many more workers the queue's limits allow now (queued counts new and submitting too)."""
    return max(0, min(queue.max_queued_workers - queued,
                      queue.max_running_workers + queue.max_queued_workers - queued - running))
