"""Worker shaping (pure) and the measured seconds per event the shaper follows."""

from __future__ import annotations

import pytest

from harvester_edge.agents.monitor import measured_seconds_per_event, range_report
from harvester_edge.config import QueueConfig
from harvester_edge.shaper import BASE_TIME, USEFUL_RUN, queue_room, shape_worker, shape_workers, worker_capacity

QUEUE = QueueConfig(
    name="q",
    batch="slurm",
    nodes_min=1,
    nodes_max=8,
    ranks_per_node=4,
    cores_per_node=4,
    walltime_min=600,
    walltime_max=7200,
    max_queued_workers=2,
    max_running_workers=4,
)


def test_small_task_gets_a_small_short_worker():
    shape = shape_worker(QUEUE, events_left=400, seconds_per_event=1.0)
    assert shape.nodes == 1
    assert shape.walltime == QUEUE.walltime_min  # 400 s of work on 4 ranks: the queue's minimum
    assert shape.events == 400


def test_big_task_fills_nodes_then_walltime():
    # 1,000,000 s of work / 0.9 = 1,111,112 rank-seconds; a full worker does 8 x 4 x 7,140: 5 workers' worth.
    # Every one of them gets the same fifth (not four full ones and a short fifth): 8 nodes x 7,005 s each
    shape = shape_worker(QUEUE, events_left=1_000_000, seconds_per_event=1.0)
    assert (shape.nodes, shape.walltime, shape.events) == (8, 7005, 200_000)
    assert shape.events <= worker_capacity(8, 4, 7005, 1.0)


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
    entries = [
        (7, {"eventStatus": "finished", "startTime": 10.0, "endTime": 30.0, "nEvents": 10}),
        (7, {"eventStatus": "finished", "startTime": 10.0, "endTime": 20.0, "nEvents": 10}),
        (7, {"eventStatus": "failed", "startTime": 0.0, "endTime": 99.0, "nEvents": 1}),
        (8, {"eventStatus": "finished"}),
    ]
    assert measured_seconds_per_event(entries) == {7: 1.5}


def test_not_done_is_reported_as_a_system_failure():
    report = range_report("1-2-1-3-1", "not-done")
    assert report["eventStatus"] == "failed" and report["errorCode"] == 60000
    assert range_report("1-2-1-3-1", "failed", {"errorCode": 42, "errorDiag": "boom"})["errorCode"] == 42


def test_backfill_takes_only_the_idle_nodes_and_a_longer_walltime():
    # one worker's worth of work (20,000 s): the 2-node window gets it all, with a longer walltime
    free = shape_worker(QUEUE, events_left=20_000, seconds_per_event=1.0)
    fits = shape_worker(QUEUE, events_left=20_000, seconds_per_event=1.0, idle_nodes=2)
    assert free.nodes > 2 and fits.nodes == 2
    assert fits.walltime > free.walltime and fits.events <= worker_capacity(2, 4, fits.walltime, 1.0)
    # fewer idle nodes than the queue's minimum: no window to fit into, shaped as usual
    assert shape_worker(QUEUE, events_left=20_000, seconds_per_event=1.0, idle_nodes=0) == free
    # several workers' worth (200,000 s): 2-node workers of an equal share each (4 of them at most 7,200 s)
    fits = shape_worker(QUEUE, events_left=200_000, seconds_per_event=1.0, idle_nodes=2)
    assert (fits.nodes, fits.walltime, fits.events) == (2, 7005, 50_000)


# the local Slurm queue of the issue: 2-node x 2-rank workers, 2 at a time (8 ranks), walltime 1-10 min
SLURM = QueueConfig(
    name="q",
    batch="slurm",
    nodes_min=2,
    nodes_max=2,
    ranks_per_node=2,
    cores_per_node=4,
    walltime_min=60,
    walltime_max=600,
    max_queued_workers=2,
    max_running_workers=2,
)


def test_fault_free_30000_events_are_split_evenly_over_both_slots():
    # the run: one 600 s worker took ~28,000 of 30,000 events, three of 64-104 s the rest. Now: 30,000 x
    # 0.07 s / 0.9 = 2,334 rank-seconds, two workers of 4 ranks get 1,167 each: 292 s of work + 60 s, 15,000 events
    shapes = shape_workers(SLURM, events_left=30_000, seconds_per_event=0.07, slots=2)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(2, 352, 15_000), (2, 352, 15_000)]
    assert all(worker_capacity(s.nodes, 2, s.walltime, 0.07) >= 15_000 for s in shapes)


def test_more_work_than_the_slots_gets_equal_shares_not_a_short_last_worker():
    # 100,000 events x 0.07 s = 7,778 rank-seconds, a full worker does 4 x 540 = 2,160: 4 workers' worth, 2 slots.
    # Both now get a quarter (6 min), the two that follow later a quarter too: none of them far longer
    shapes = shape_workers(SLURM, events_left=100_000, seconds_per_event=0.07, slots=2)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(2, 547, 25_000)] * 2
    later = shape_workers(SLURM, events_left=50_000, seconds_per_event=0.07, slots=2)
    assert [(s.nodes, s.walltime, s.events) for s in later] == [(2, 547, 25_000)] * 2


def test_no_worker_shorter_than_useful_unless_the_very_end():
    # 8,000 events x 0.07 = 622 rank-seconds: two workers would run 78 s each (< USEFUL_RUN = 120 s of work),
    # so one worker of 4 ranks takes it all: 156 s of work
    shapes = shape_workers(SLURM, events_left=8_000, seconds_per_event=0.07, slots=2)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(2, 216, 8_000)]
    assert USEFUL_RUN == 120
    # 15,000 events = 1,167 rank-seconds: two workers of 146 s of work each are useful: split in two
    shapes = shape_workers(SLURM, events_left=15_000, seconds_per_event=0.07, slots=2)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(2, 206, 7_500)] * 2
    # the task's very end: 1,000 events = 78 rank-seconds, less than useful on any shape: one worker sized for it
    # (20 s of work on 4 ranks + 60 s, at the queue's minimum of 60 s or more)
    shapes = shape_workers(SLURM, events_left=1_000, seconds_per_event=0.07, slots=2)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(2, 80, 1_000)]


def test_wide_queue_prefers_fewer_wider_workers_of_useful_length():
    # QUEUE: 1-8 nodes x 4 ranks. 30,000 events x 0.07 = 2,334 rank-seconds: 4 nodes keep 146 s of work each
    # (8 nodes would be 73 s): one 4-node worker, the queue's minimum walltime (600 s) though the work is ~3 min
    shapes = shape_workers(QUEUE, events_left=30_000, seconds_per_event=0.07, slots=4)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(4, 600, 30_000)]
    # 300,000 events = 23,334 rank-seconds: 48 nodes' worth of useful work, 8 per worker: 4 workers of 8 nodes,
    # 182 s of work each
    shapes = shape_workers(QUEUE, events_left=300_000, seconds_per_event=0.07, slots=4)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(8, 600, 75_000)] * 4
    assert max(s.walltime for s in shapes) == min(s.walltime for s in shapes)


def test_no_slots_or_no_work_no_workers():
    assert shape_workers(SLURM, events_left=10_000, seconds_per_event=0.07, slots=0) == []
    assert shape_workers(SLURM, events_left=0, seconds_per_event=0.07, slots=2) == []


def test_a_small_rest_is_left_to_the_running_pilots():
    # 1,000 events = 20 s of work on 4 ranks: with workers of the job still running, their pilots pull it (a new
    # allocation would start when the rest is gone and get nothing); with none running it is the task's very end
    assert shape_workers(SLURM, events_left=1_000, seconds_per_event=0.07, slots=2, others_running=True) == []
    assert len(shape_workers(SLURM, events_left=1_000, seconds_per_event=0.07, slots=2)) == 1
    # a rest worth a useful worker (a killed worker's share: 8,000 events = 156 s on 4 ranks) still gets one
    shapes = shape_workers(SLURM, events_left=8_000, seconds_per_event=0.07, slots=1, others_running=True)
    assert [(s.nodes, s.walltime, s.events) for s in shapes] == [(2, 216, 8_000)]
