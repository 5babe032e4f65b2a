"""The PostgreSQL writer's short ways for job updates (store/pg.py): a heartbeat run alone is its own transaction,
the heartbeats of a batch are answered after its COMMIT, and an update whose job is not in the reported state takes
the general path; a row lock held elsewhere is met NOWAIT and retried a bounded number of times."""

from __future__ import annotations

import psycopg
import pytest

from harvester_edge.central.service import CentralService
from harvester_edge.errors import StoreError

from .conftest import db_rows, db_settings, task_dict


@pytest.fixture
def pg_service(pg_cluster, tmp_path, clock):
    url = pg_cluster.fresh_database()
    svc = CentralService.open(url, db_settings(url, tmp_path, heartbeat_timeout=3600), clock)
    yield svc, url
    svc.close()


def jobs_of(svc: CentralService, n: int) -> list[int]:
    svc.submit_task(task_dict(events=100, events_per_range=10, jobs=n))
    return [j["PandaID"] for j in svc.acquire_jobs("SITE", n)]


def job(url: str, panda_id: int) -> tuple:
    return db_rows(url, "SELECT status, n_events, heartbeat FROM jobs WHERE panda_id=?", (panda_id,))[0]


def test_a_lone_heartbeat_and_a_lone_state_change(pg_service, clock) -> None:
    svc, url = pg_service
    (a,) = jobs_of(svc, 1)
    assert svc.update_job(a, "running") == "NULL"  # sent -> running: the general path, after the short way
    assert job(url, a)[0] == "running"
    clock.now += 10
    assert svc.update_job(a, "running", {"nEvents": 7}) == "NULL"  # a heartbeat: one statement, its own commit
    assert job(url, a) == ("running", 7, clock.now)
    assert svc.update_job(a, "finished", {"nEvents": 10}) == "NULL"
    assert job(url, a)[:2] == ("finished", 10)


def test_a_batch_answers_each_update_after_its_commit(pg_service, clock) -> None:
    """Heartbeats (answered from their rows after the COMMIT), an update whose job is in another state (its
    statement changed nothing: run again the general way) and a final one, in one batch."""
    svc, url = pg_service
    a, b, c, d = jobs_of(svc, 4)
    for j in (a, c, d):
        svc.update_job(j, "running")
    svc.kill_task(db_rows(url, "SELECT task_id FROM jobs WHERE panda_id=?", (d,))[0][0])  # d must die
    clock.now += 5
    ops = [
        svc.update_job_op(a, "running", {"nEvents": 3}),
        svc.update_job_op(b, "running", {"nEvents": 1}),  # b is still 'sent'
        svc.update_job_op(c, "finished", {"nEvents": 10}),
        svc.update_job_op(d, "running", {"nEvents": 2}),
    ]
    answers = svc.db._commit([(op.fn, op.args) for op in ops])
    assert answers == [(True, "tobekilled")] * 4  # the kill marked every job of the task
    assert job(url, a) == ("running", 3, clock.now)
    assert job(url, b)[:2] == ("running", 1)
    assert job(url, c)[:2] == ("finished", 10)
    assert job(url, d) == ("running", 2, clock.now)


def test_a_heartbeat_of_a_locked_job_is_retried_then_refused_as_busy(pg_service, clock) -> None:
    svc, url = pg_service
    (a,) = jobs_of(svc, 1)
    svc.update_job(a, "running")
    svc.db.lock_retries = 2
    with psycopg.connect(url) as other:  # a transaction elsewhere holds the job's row
        other.execute("SELECT 1 FROM jobs WHERE panda_id=%s FOR UPDATE", (a,))
        with pytest.raises(StoreError, match="busy, a row stayed locked"):
            svc.update_job(a, "running", {"nEvents": 4})
        assert job(url, a)[1] == 0  # nothing written
    assert svc.update_job(a, "running", {"nEvents": 4}) == "NULL"  # the lock is gone
    assert job(url, a)[1] == 4


def test_a_write_cannot_go_on_after_its_last_statement(pg_service) -> None:
    svc, url = pg_service
    (a,) = jobs_of(svc, 1)

    def goes_on(conn):
        conn.execute_last("UPDATE jobs SET n_events=? WHERE panda_id=? RETURNING command", (9, a), lambda row: row)
        conn.execute("UPDATE jobs SET n_events=? WHERE panda_id=?", (11, a))

    def twice(conn):
        conn.execute_last("UPDATE jobs SET n_events=? WHERE panda_id=? RETURNING command", (9, a), lambda row: row)
        conn.execute_last("UPDATE jobs SET n_events=? WHERE panda_id=? RETURNING command", (11, a), lambda row: row)

    for write in (goes_on, twice):
        [(ok, error)] = svc.db._commit([(write, ())])
        assert not ok and isinstance(error, AssertionError) and "after its last statement" in str(error)
        assert job(url, a)[1] != 11
        # in a batch, where the last statement's row is read after the COMMIT
        [_, (ok, error)] = svc.db._commit([(lambda conn: None, ()), (write, ())])
        assert not ok and isinstance(error, AssertionError) and "after its last statement" in str(error)
        assert job(url, a)[1] != 11


def test_a_batch_of_heartbeats_needs_no_begin_and_a_later_savepoint_gets_one(pg_service, clock, monkeypatch) -> None:
    """Heartbeats only: the pipeline's implicit transaction (no BEGIN, no COMMIT). A write after them that needs a
    transaction block (a SAVEPOINT) has its BEGIN sent first, and the heartbeats before it belong to that block:
    a write that then fails undoes them too, and the careful way writes them again, the failed one refused."""
    svc, url = pg_service
    careful = []  # batches that failed the one-go way (a SAVEPOINT without its BEGIN would be one)
    original = svc.db._careful
    monkeypatch.setattr(svc.db, "_careful", lambda conn, batch: careful.append(len(batch)) or original(conn, batch))
    a, b, c = jobs_of(svc, 3)
    for j in (a, b, c):
        svc.update_job(j, "running")
    clock.now += 5
    beats = [svc.update_job_op(j, "running", {"nEvents": n}) for j, n in ((a, 1), (b, 2))]
    assert svc.db._commit([(op.fn, op.args) for op in beats]) == [(True, "NULL")] * 2
    assert [job(url, j)[1] for j in (a, b)] == [1, 2]

    def savepoint_write(conn):  # SAVEPOINT outside a transaction block is an error: it needs the late BEGIN
        conn.execute("SAVEPOINT s")
        conn.execute("UPDATE jobs SET n_events=? WHERE panda_id=?", (30, c))
        conn.execute("RELEASE s")
        return "saved"

    beats = [svc.update_job_op(j, "running", {"nEvents": n}) for j, n in ((a, 3), (b, 4))]
    calls = [(op.fn, op.args) for op in beats] + [(savepoint_write, ())]
    assert svc.db._commit(calls) == [(True, "NULL"), (True, "NULL"), (True, "saved")]
    assert [job(url, j)[1] for j in (a, b, c)] == [3, 4, 30]
    assert careful == []  # both batches went in one go

    def fails(conn):
        conn.execute("UPDATE jobs SET n_events=? WHERE panda_id=?", (40, c))
        return conn.execute("SELECT 1/0").fetchone()

    beats = [svc.update_job_op(j, "running", {"nEvents": n}) for j, n in ((a, 5), (b, 6))]
    answers = svc.db._commit([(op.fn, op.args) for op in beats] + [(fails, ())])
    assert answers[:2] == [(True, "NULL"), (True, "NULL")]
    assert not answers[2][0] and "division by zero" in str(answers[2][1])
    assert [job(url, j)[1] for j in (a, b, c)] == [5, 6, 30]  # the failed write undone alone
    assert careful == [3]
