"""How big a worker should be: nodes and walltime from the work left and the queue's limits. Pure functions.

JEDI's sizing rule is the starting point: walltime >= seconds_per_event x events / (cores x efficiency) + base time.
The remaining work is split evenly over the workers that may start now (they all pull from one pool, so equal
shares finish together), each as wide as still useful; the queue's limits cap the size, and a backfill window the
nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harvester_edge.config import QueueConfig

EFFICIENCY = 0.9  # JEDI's default
BASE_TIME = 60  # seconds: pilot start-up, the last range's report, the drain margin
USEFUL_RUN = 2 * BASE_TIME  # seconds of work below which a worker costs more in start-up than it does


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


def shape_worker(
    queue: QueueConfig, events_left: int, seconds_per_event: float, idle_nodes: int | None = None
) -> Shape | None:
    """The shape of one more worker for `events_left` uncovered events, or None when there is nothing to cover.

    `idle_nodes` (backfill): when at least nodes_min nodes are idle, the worker takes no more than those, so it
    can start now instead of waiting for a larger allocation; the walltime grows to cover the same work.
    """
    shapes = shape_workers(queue, events_left, seconds_per_event, slots=1, idle_nodes=idle_nodes)
    return shapes[0] if shapes else None


def shape_workers(
    queue: QueueConfig,
    events_left: int,
    seconds_per_event: float,
    slots: int,
    idle_nodes: int | None = None,
    others_running: bool = False,
) -> list[Shape]:
    """Up to `slots` workers that share `events_left` uncovered events evenly, so they finish together.

    The work is split over as many workers as may start now, but never into workers with less than USEFUL_RUN
    seconds of work each (start-up and the last report would cost more than they do): then fewer, wider workers.
    The task's very end (less than USEFUL_RUN of work even on nodes_min nodes) gets one worker sized for exactly
    that, but only when no other worker runs the job (`others_running`): their pilots pull such a rest, and a new
    allocation would start when it is gone. More work than `slots` full-size workers can do: `slots` workers of the
    same share as the ones that follow later (1 / the number of full-size workers the work needs), not full ones
    and a short last one.
    """
    if events_left <= 0 or slots <= 0:
        return []
    spe = max(seconds_per_event, 1e-3)
    rank_seconds = events_left * spe / EFFICIENCY
    ranks = queue.ranks_per_node
    longest = max(1, queue.walltime_max - BASE_TIME)  # seconds of work one worker can do
    nodes_max = queue.nodes_max
    if idle_nodes is not None and idle_nodes >= queue.nodes_min:
        nodes_max = min(nodes_max, idle_nodes)
    useful_run = min(USEFUL_RUN, longest / 2)  # a queue of short walltimes lowers the bar
    needed = math.ceil(rank_seconds / (nodes_max * ranks * longest))  # full-size workers the work needs
    useful = int(rank_seconds // (nodes_max * ranks * useful_run))  # widest split with useful workers
    n = min(slots, max(needed, useful, 1))
    share = rank_seconds / max(n, needed)  # rank-seconds per worker: equal shares
    # the widest worker whose run is still useful, but wide enough to fit its share into the longest walltime
    nodes = max(math.ceil(share / (ranks * longest)), min(nodes_max, int(share // (ranks * useful_run))))
    nodes = min(nodes_max, max(queue.nodes_min, nodes))
    if others_running and needed <= 1 and share / (nodes * ranks) < useful_run:
        return []
    walltime = math.ceil(share / (nodes * ranks)) + BASE_TIME
    walltime = min(queue.walltime_max, max(queue.walltime_min, walltime))
    events = min(math.ceil(events_left / max(n, needed)), worker_capacity(nodes, ranks, walltime, spe))
    return [Shape(nodes=nodes, walltime=walltime, events=events) for _ in range(n)]


def queue_room(queue: QueueConfig, queued: int, running: int) -> int:
    """How many more workers the queue's limits allow now (queued counts new and submitting too)."""
    return max(
        0,
        min(queue.max_queued_workers - queued, queue.max_running_workers + queue.max_queued_workers - queued - running),
    )
