"""The per-table store modules: the one queues upsert, the jobs-of-a-worker query, the read-only open, state sets."""

from __future__ import annotations

import sqlite3

import pytest

from harvester_edge.states import (
    JOB_ENDED,
    OUTBOX_ENDED,
    RANGE_ENDED,
    TERMINAL,
    WORKER_ENDED,
    WORKER_LIVE,
    JobState,
    OutboxState,
    RangeState,
    WorkerState,
)
from harvester_edge.store import job_workers, jobs, open_store, queues, workers
from harvester_edge.store.readonly import open_readonly

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "h.db")
    yield store
    store.close()


def test_state_sets_are_the_terminal_states_and_their_complement():
    for kind, ended in ((JobState, JOB_ENDED), (WorkerState, WORKER_ENDED), (RangeState, RANGE_ENDED)):
        assert frozenset(ended) == TERMINAL[kind]
    assert frozenset(OUTBOX_ENDED) == TERMINAL[OutboxState]
    assert set(WORKER_LIVE) | set(WORKER_ENDED) == set(WorkerState) and not set(WORKER_LIVE) & set(WORKER_ENDED)


def test_queue_upsert_keeps_draining_unless_told(store):
    with store.write() as conn:
        queues.upsert(conn, "q", "local", NOW)
    conn = store.connection()
    assert not queues.is_draining(conn, "q") and queues.draining_names(conn) == set()
    with store.write() as conn:
        queues.upsert(conn, "q", "local", NOW + 1, draining=True)
        queues.upsert(conn, "q", "slurm", NOW + 2)  # the daemon's config sync: batch follows, draining stays
    row = queues.all_queues(store.connection())[0]
    assert (row["batch"], row["draining"], row["updated_at"]) == ("slurm", 1, NOW + 2)
    with store.write() as conn:
        queues.upsert(conn, "q", "slurm", NOW + 3, draining=False)
        queues.upsert(conn, "new", "local", NOW + 3, draining=True)
    assert queues.draining_by_name(store.connection()) == {"q": 0, "new": 1}


def test_jobs_of_worker_in_panda_id_order(store):
    with store.write() as conn:
        queues.upsert(conn, "q", "local", NOW)
        for pid in (30, 10, 20):
            jobs.insert_fetched(conn, {"PandaID": pid, "taskID": 1}, "q", 100, NOW)
        wid = workers.insert_new(conn, "q", "pending-x", 1, 1, 60, NOW)
        other = workers.insert_new(conn, "q", "pending-y", 1, 1, 60, NOW)
        for pid in (30, 10, 20):
            job_workers.link(conn, pid, wid)
        job_workers.link(conn, 10, other)
    assert job_workers.jobs_of_worker(store.connection(), wid) == [10, 20, 30]
    assert job_workers.jobs_of_worker(store.connection(), other) == [10]
    assert sorted(job_workers.workers_of_jobs(store.connection(), [10])) == [wid, other]


def test_open_readonly_reads_and_refuses_writes(store):
    with store.write() as conn:
        queues.upsert(conn, "q", "local", NOW)
    ro = open_readonly(store.path)
    try:
        assert ro.execute("SELECT name FROM queues").fetchone()["name"] == "q"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.execute("DELETE FROM queues")
    finally:
        ro.close()
