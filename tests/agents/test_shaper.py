"""Worker shaping (pure) and the measured seconds per event the shaper follows."""
from __future__ import annotations

import pytest

from harvester_edge.agents.monitor import measured_seconds_per_event, range_report
from harvester_edge.config import QueueConfig
from harvester_edge.shaper import BASE_TIME, queue_room, shape_worker, worker_capacity

QUEUE = QueueConfig(name="q", batch="slurm", nodes_min=1, nodes_max=8, ranks_per_node=4, cores_per_node=4,
                    walltime_min=600, walltime_max=7200, max_queued_workers=2, max_running_workers=4)


def test_small_task_gets_a_small_short_worker():
    shape = shape_worker(QUEUE, events_left=400, seconds_per_event=1.0)
    assert shape.nodes == 1
    assert shape.walltime == QUEUE.walltime_min  # 400 s of work on 4 ranks: the queue's minimum
    assert shape.events == 400


def test_big_task_fills_nodes_then_walltime():
    shape = shape_worker(QUEUE, events_left=1_000_000, seconds_per_event=1.0)
    assert (shape.nodes, shape.walltime) == (8, 7200)
    assert shape.events == worker_capacity(8, 4, 7200, 1.0) < 1_000_000


def test_jedi_rule_walltime_covers_the_work():
    shape = shape_worker(QUEUE, events_left=20_000, seconds_per_event=2.0)
    need = 20_000 * 2.0 / 0.9 / (shape.nodes * QUEUE.ranks_per_node) + BASE_TIME
    assert shape.walltime >= min(need, QUEUE.walltime_max) - 1
    assert QUEUE.nodes_min <= shape.nodes <= QUEUE.nodes_max


@pytest.mark.parametrize("left", [0, -5])
def test_nothing_to_cover_no_worker(left):
    assert shape_worker(QUEUE, events_left=left, seconds_per_event=1.0) is None


@pytest.mark.parametrize("queued,running,room", [(0, 0, 2), (1, 0, 1), (2, 0, 0), (0, 4, 2), (1, 4, 1), (0, 6, 0)])
def test_queue_room(queued, running, room):
    assert queue_room(QUEUE, queued, running) == room


def test_measured_seconds_per_event():
    entries = [(7, {"eventStatus": "finished", "startTime": 10.0, "endTime": 30.0, "nEvents": 10}),
               (7, {"eventStatus": "finished", "startTime": 10.0, "endTime": 20.0, "nEvents": 10}),
               (7, {"eventStatus": "failed", "startTime": 0.0, "endTime": 99.0, "nEvents": 1}),
               (8, {"eventStatus": "finished"})]
    assert measured_seconds_per_event(entries) == {7: 1.5}


def test_not_done_is_reported_as_a_system_failure():
    report = range_report("1-2-1-3-1", "not-done")
    assert report["eventStatus"] == "failed" and report["errorCode"] == 60000
    assert range_report("1-2-1-3-1", "failed", {"errorCode": 42, "errorDiag": "boom"})["errorCode"] == 42


def test_backfill_takes_only_the_idle_nodes_and_a_longer_walltime():
    free = shape_worker(QUEUE, events_left=200_000, seconds_per_event=1.0)
    fits = shape_worker(QUEUE, events_left=200_000, seconds_per_event=1.0, idle_nodes=2)
    assert free.nodes > 2 and fits.nodes == 2
    assert fits.walltime > free.walltime and fits.events <= worker_capacity(2, 4, fits.walltime, 1.0)
    # fewer idle nodes than the queue's minimum: no window to fit into, shaped as usual
    assert shape_worker(QUEUE, events_left=200_000, seconds_per_event=1.0, idle_nodes=0) == free
