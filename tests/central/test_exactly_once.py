"""Exactly-once event accounting under random interleavings (hypothesis stateful test on the real service).

Operations: acquire jobs, acquire ranges, report finished/failed (current, stale or duplicate ids, in bulk),
job finished/failed, heartbeat timeouts (watchdog), task kill and retry. Invariants after every step:
- a range is finished at most once, and only by the report carrying its current (job, attempt);
- an acquire hands out only ranges that were ready, never one held by another job;
- in-flight ranges belong to live jobs; the status counts add up to the number of ranges;
- a ready range names no holder (claims find ready ranges by that).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from harvester_edge.central.errors import CentralError
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.central.states import JOB_WATCHED

from .conftest import Clock, task_dict

N_RANGES = 12


def key(range_id: str) -> tuple[int, int]:
    parts = range_id.split("-")
    return int(parts[0]), int(parts[3])


class ExactlyOnce(RuleBasedStateMachine):
    # central.db of each run: None = a SQLite file in a new temp dir; else a callable giving a PostgreSQL URL
    target: Callable[[], str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="central-prop-"))
        self.clock = Clock()
        db = self.dir / "c.db" if self.target is None else type(self).target()  # type: ignore[misc]
        settings_ = CentralSettings(db=db, files_dir=self.dir, heartbeat_timeout=100)
        self.svc = CentralService.open(db, settings_, self.clock)
        self.jobs: list[int] = []
        self.dispatched: list[str] = []  # every id ever handed out
        self.current: dict[tuple, str] = {}  # range -> id of its latest dispatch
        self.finished_by: dict[tuple, str] = {}
        self.last_reports: list[dict] = []

    @initialize(jobs=st.integers(1, 3), attempts=st.integers(1, 3))
    def submit(self, jobs: int, attempts: int) -> None:
        self.task = self.svc.submit_task(
            task_dict(events=N_RANGES * 2, events_per_range=2, jobs=jobs, max_attempts=attempts)
        )

    def ready(self) -> set[tuple]:
        return {
            (self.task, r[0])
            for r in self.svc.db.query("SELECT process_id FROM ranges WHERE task_id=? AND status=0", (self.task,))
        }

    @rule(n=st.integers(1, 3))
    def acquire_jobs(self, n: int) -> None:
        self.jobs += [j["PandaID"] for j in self.svc.acquire_jobs("SITE", n)]

    @rule(data=st.data(), n=st.integers(1, 5))
    def acquire_ranges(self, data, n: int) -> None:
        if not self.jobs:
            return
        job = data.draw(st.sampled_from(self.jobs))
        before = self.ready()
        got = self.svc.acquire_event_ranges(job, self.task, n)
        keys = [key(r["eventRangeID"]) for r in got]
        assert set(keys) <= before, "handed out a range that was not ready"
        assert len(set(keys)) == len(keys)
        for r, k in zip(got, keys):
            assert r["eventRangeID"] not in self.dispatched, "a dispatch id was reused"
            self.dispatched.append(r["eventRangeID"])
            self.current[k] = r["eventRangeID"]

    @rule(
        data=st.data(),
        status=st.sampled_from(["finished", "finished", "failed", "fatal", "running"]),
        size=st.integers(1, 4),
        system=st.booleans(),
    )
    def report(self, data, status: str, size: int, system: bool) -> None:
        if not self.dispatched:
            return
        ids = data.draw(st.lists(st.sampled_from(self.dispatched), min_size=1, max_size=size))
        reps = [{"eventRangeID": i, "eventStatus": status, "errorCode": 1099 if system else 5} for i in ids]
        self._send(reps)

    def _send(self, reps: list[dict]) -> None:
        held = {k: s for k, s in self.statuses().items()}
        out = self.svc.update_event_ranges(reps)
        seen: set[str] = set()
        for rep, result in zip(reps, out["Results"]):
            rid, k = rep["eventRangeID"], key(rep["eventRangeID"])
            if result == "applied":
                assert rid == self.current[k], "a report of an old attempt was applied"
                assert held[k] in (1, 2), "a range not in flight was changed"
                if rep["eventStatus"] != "running":
                    assert rid not in seen
                    seen.add(rid)
                    if rep["eventStatus"] == "finished":
                        assert k not in self.finished_by, "a range finished twice"
                        self.finished_by[k] = rid
                    held[k] = -1  # later reports in the same request must not apply again
            elif result == "stale":  # not the holder: an old attempt, or the range was released since
                assert rid != self.current[k] or held[k] not in (1, 2)
            elif result in ("duplicate", "ignored"):  # the holder's report of a range no longer in flight
                assert rid == self.current[k] and held[k] not in (1, 2), "the holder's report was not applied"
            else:
                raise AssertionError(f"unknown result {result!r} for {rid}")
        self.last_reports = reps

    @rule()
    def duplicate_last_request(self) -> None:
        if self.last_reports:
            self._send(self.last_reports)

    @rule(data=st.data(), state=st.sampled_from(["running", "finished", "failed"]))
    def job_update(self, data, state: str) -> None:
        if not self.jobs:
            return
        try:
            self.svc.update_job(data.draw(st.sampled_from(self.jobs)), state, {"pilotErrorCode": 1137})
        except CentralError:
            pass  # illegal transition: refused, nothing written (checked by the invariants)

    @rule(seconds=st.sampled_from([10, 150]))
    def time_passes(self, seconds: int) -> None:
        self.clock.now += seconds
        self.svc.run_watchdog()

    @rule()
    def kill_or_retry(self) -> None:
        try:
            if self.svc.show_task(self.task)["status"] in ("failed", "aborted"):
                self.svc.retry_task(self.task)
            else:
                self.svc.kill_task(self.task)
        except CentralError:
            pass

    def statuses(self) -> dict[tuple, int]:
        return {
            (self.task, r[0]): r[1]
            for r in self.svc.db.query("SELECT process_id, status FROM ranges WHERE task_id=?", (self.task,))
        }

    @invariant()
    def accounting_adds_up(self) -> None:
        if not hasattr(self, "task"):
            return
        st_ = self.statuses()
        assert len(st_) == N_RANGES
        finished = {k for k, s in st_.items() if s == 3}
        assert finished == set(self.finished_by), "finished ranges differ from applied finish reports"
        live = {
            r[0]
            for r in self.svc.db.query(
                f"SELECT panda_id FROM jobs WHERE status IN ({','.join('?' * len(JOB_WATCHED))})", tuple(JOB_WATCHED)
            )
        }
        for row in self.svc.db.query(
            "SELECT panda_id, attempt_nr, process_id FROM ranges WHERE task_id=? AND status IN (1, 2)", (self.task,)
        ):
            assert row[0] in live, f"range {row[2]} is held by job {row[0]} which is not alive"
            assert self.current[(self.task, row[2])].endswith(f"-{row[0]}-1-{row[2]}-{row[1]}")
        # claims find ready ranges through the index of ranges with no holder (ranges_unheld)
        held_ready = self.svc.db.query(
            "SELECT process_id FROM ranges WHERE task_id=? AND status=0 AND panda_id IS NOT NULL", (self.task,)
        )
        assert not held_ready, f"ready ranges that name a holder: {[r[0] for r in held_ready]}"

    def teardown(self) -> None:
        self.svc.close()
        shutil.rmtree(self.dir, ignore_errors=True)


ExactlyOnce.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
TestExactlyOnce = ExactlyOnce.TestCase


def test_exactly_once_on_postgresql(pg_cluster) -> None:
    """The same machine over PostgreSQL (a fresh database per run; fewer runs, each costs a database)."""

    class OnPostgres(ExactlyOnce):
        target = staticmethod(pg_cluster.fresh_database)

    run_state_machine_as_test(
        OnPostgres,
        settings=settings(
            max_examples=40,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
