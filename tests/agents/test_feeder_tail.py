"""The feeder's tail rules on a real SQLite store and real pilot files, with a central service stand-in that hands
out and takes back ranges like the real one (ready -> sent -> finished, failed -> ready at attempt + 1): a pilot is
told "no more" only when nothing can still come; until then its request is held, and ranges a dead worker gave back
are in its answer in the feeder's first cycle after the propagator sent their report. (The same on the real Slurm
cluster with real pilots: test_tail.py.)"""

from __future__ import annotations

import json

import yaml

from harvester_edge.agents.base import AgentContext
from harvester_edge.agents.feeder import Feeder
from harvester_edge.agents.monitor import range_report
from harvester_edge.agents.propagator import Propagator
from harvester_edge.config import load_config
from harvester_edge.outbox import enqueue
from harvester_edge.seams.clock import Clock
from harvester_edge.states import RangeState as R
from harvester_edge.store import open_store, transition
from jumbo import protocol

NOW = 1_800_000_000.0


class Central:
    """acquire / update / count as the central service does them for one task (7) of ranges of 10 events."""

    def __init__(self, n: int):
        self.ready = [(i, 1) for i in range(1, n + 1)]  # (process id, attempt)
        self.sent: dict[str, tuple[int, int]] = {}
        self.calls: list[str] = []

    def acquire_event_ranges(self, job_id, jobset_id, task_id=None, n_ranges=10):  # as CentralClient
        self.calls.append("acquire")
        got, self.ready = self.ready[:n_ranges], self.ready[n_ranges:]
        out = []
        for pid, attempt in got:
            rid = f"7-{job_id}-1-{pid}-{attempt}"
            self.sent[rid] = (pid, attempt)
            out.append(
                {
                    "eventRangeID": rid,
                    "startEvent": 10 * pid - 9,
                    "lastEvent": 10 * pid,
                    "LFN": "f",
                    "GUID": "g",
                    "scope": "edge",
                }
            )
        return out

    def update_event_ranges(self, reports, version=0):
        self.calls.append("update")
        for rep in reports:
            pid, attempt = self.sent.pop(rep["eventRangeID"])
            if rep["eventStatus"] == "failed":
                self.ready.append((pid, attempt + 1))
        return {}

    def update_jobs_bulk(self, updates, harvester_id=None):  # the propagator's heartbeat
        return [{} for _ in updates]

    def available_range_count(self, task_id=None, job_id=None, jobset_id=None):
        self.calls.append("count")
        return len(self.ready)


def site(tmp_path, central):
    path = tmp_path / "site.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site": "s",
                "queues": [{"name": "q", "batch": "local", "ranks_per_node": 2}],
                "paths": {"work_dir": str(tmp_path / "work")},
            }
        )
    )
    config = load_config(path)
    store = open_store(config.db_path)
    aps = {}
    with store.write() as conn:
        conn.execute("INSERT INTO queues (name, batch, updated_at) VALUES ('q', 'local', 0)")
        conn.execute(
            "INSERT INTO jobs (panda_id, task_id, queue, state, spec, events_total, created_at, updated_at) "
            "VALUES (1, 7, 'q', 'running', ?, 40, ?, ?)",
            (json.dumps({"eventsPerRange": 10}), NOW, NOW),
        )
        for wid in (1, 2):
            aps[wid] = tmp_path / f"ap{wid}"
            aps[wid].mkdir()
            conn.execute(
                "INSERT INTO workers (id, queue, state, job_name, access_point, nodes, ranks_per_node, "
                "walltime, created_at, updated_at) VALUES (?, 'q', 'running', ?, ?, 1, 2, 600, ?, ?)",
                (wid, f"w{wid}", str(aps[wid]), NOW, NOW),
            )
            conn.execute("INSERT INTO job_workers (panda_id, worker_id) VALUES (1, ?)", (wid,))
    ctx = AgentContext(config=config, store=store, clock=Clock(), daemon_id="test:1", central=central)
    return Feeder(ctx), Propagator(ctx), store, aps


def ask(ap, seq, n):
    protocol.write_event_request(ap, seq, {1: {"pandaID": 1, "taskID": 7, "jobsetID": 7, "nRanges": n}})


def answer(ap, seq):
    path = protocol.stream_path(ap, protocol.RANGES, seq)
    if not path.exists():
        return None
    got = protocol.load_event_ranges(path)
    return [r["eventRangeID"] for r in got.ranges.get(1, [])], sorted(got.no_more)


def test_held_until_a_dead_workers_ranges_come_back_then_no_more_only_when_nothing_can_come(tmp_path):
    central = Central(4)
    feeder, propagator, store, aps = site(tmp_path, central)
    ask(aps[1], 1, 4)
    feeder.run_cycle(NOW)
    assert answer(aps[1], 1) == (["7-1-1-1-1", "7-1-1-2-1", "7-1-1-3-1", "7-1-1-4-1"], [])
    # worker 2 asks while the central service has nothing ready but worker 1 holds 4 ranges: held, not "no more"
    ask(aps[2], 1, 4)
    feeder.run_cycle(NOW + 1)
    assert answer(aps[2], 1) is None
    assert protocol.pending(aps[2], protocol.REQUESTS), "the request must stay open"
    # worker 1 dies: the monitor hands its ranges back (the outbox); still held while the report waits
    with store.write() as conn:
        conn.execute("UPDATE workers SET state = 'failed' WHERE id = 1")
        ids = [r[0] for r in conn.execute("SELECT range_id FROM event_ranges WHERE worker_id = 1")]
        transition(conn, ids, R.DISPATCHED, R.RELEASED, now=NOW + 2)
        enqueue(conn, "update_event_ranges", [range_report(i, "not-done") for i in ids], NOW + 2)
    feeder.run_cycle(NOW + 2)
    assert answer(aps[2], 1) is None
    # the propagator sends the report (the central service has them ready again): the next feeder cycle answers
    propagator.run_cycle(NOW + 3)
    assert central.ready == [(1, 2), (2, 2), (3, 2), (4, 2)]
    feeder.run_cycle(NOW + 3)
    assert answer(aps[2], 1) == (["7-1-1-1-2", "7-1-1-2-2", "7-1-1-3-2", "7-1-1-4-2"], [])
    # worker 2 asks again while its own 4 are running: nothing can come but its own ranges could fail: held
    ask(aps[2], 2, 4)
    feeder.run_cycle(NOW + 4)
    assert answer(aps[2], 2) is None
    with store.write() as conn:  # worker 2 reports them finished; its request is held until the report went out
        ids = [r[0] for r in conn.execute("SELECT range_id FROM event_ranges WHERE worker_id = 2")]
        transition(conn, ids, R.DISPATCHED, R.FINISHED, now=NOW + 5)
        enqueue(conn, "update_event_ranges", [range_report(i, "finished") for i in ids], NOW + 5)
    feeder.run_cycle(NOW + 5)
    assert answer(aps[2], 2) is None
    propagator.run_cycle(NOW + 6)
    feeder.run_cycle(NOW + 6)
    assert answer(aps[2], 2) == ([], [1])  # now, and only now: no more ranges
