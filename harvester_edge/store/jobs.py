"""The jobs table: the jumbo jobs fetched from the central service (see states.JobState for their life).

A job is inserted FETCHED (INSERT OR IGNORE: a job fetched twice is one row), moves to RUNNING with its first worker,
and ends FINISHED when its task has no ranges left and no worker runs it, or CANCELLED on a central kill.
no_more_ranges is the feeder's "the service had no more ranges for it"; events_done and seconds_per_event follow the
pilots' reports (monitor). State changes go through rows.transition; everything here sets the other columns.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from harvester_edge.states import (
    JOB_ACTIVE,
    JOB_ENDED,
    RANGE_HELD,
    WORKER_ENDED,
    WORKER_LIVE,
    JobState,
    RangeState,
    WorkerState,
)

J, R, W = JobState, RangeState, WorkerState
_ACTIVE = tuple(s.value for s in JOB_ACTIVE)
_LIVE_MARKS = ",".join("?" * len(WORKER_LIVE))


def insert_fetched(
    conn: sqlite3.Connection, job: dict[str, Any], queue: str, events_total: int | None, now: float
) -> None:
    """A job as the central service sent it (its spec kept as JSON); a job already known is left as it is."""
    conn.execute(
        "INSERT OR IGNORE INTO jobs (panda_id, task_id, jobset_id, queue, state, spec, events_total,"
        " seconds_per_event, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            int(job["PandaID"]),
            int(job["taskID"]),
            job.get("jobsetID"),
            queue,
            J.FETCHED.value,
            json.dumps(job),
            events_total,
            job.get("secondsPerEvent"),
            now,
            now,
        ),
    )


def active_count(conn: sqlite3.Connection, queue: str) -> int:
    return conn.execute("SELECT count(*) FROM jobs WHERE queue = ? AND state IN (?, ?)", (queue, *_ACTIVE)).fetchone()[
        0
    ]


def wanting_workers(conn: sqlite3.Connection, queue: str) -> list[sqlite3.Row]:
    """The queue's unfinished jobs that may still get ranges, oldest first."""
    return conn.execute(
        "SELECT * FROM jobs WHERE queue = ? AND state IN (?, ?) AND no_more_ranges = 0 ORDER BY panda_id",
        (queue, *_ACTIVE),
    ).fetchall()


def for_idle_pilot(conn: sqlite3.Connection, queue: str, limit: int, worker_id: int = 0) -> list[sqlite3.Row]:
    """The queue's unfinished jobs that may get ranges and that no live worker (but `worker_id`, the idle one)
    runs: fetched and waiting for a worker, or ready again (its own earlier job too, when its failed ranges came
    back after it had been told "no more"): what an idle persistent pilot takes before a job is fetched; oldest
    first."""
    return conn.execute(
        "SELECT * FROM jobs j WHERE j.queue = ? AND j.state IN (?, ?) AND j.no_more_ranges = 0 AND NOT EXISTS "
        "(SELECT 1 FROM workers w CROSS JOIN job_workers jw ON jw.worker_id = w.id AND jw.panda_id = j.panda_id "
        "AND jw.left_at IS NULL WHERE w.state IN (?, ?, ?, ?) AND w.id != ?) ORDER BY j.panda_id LIMIT ?",
        (queue, *_ACTIVE, *(s.value for s in WORKER_LIVE), worker_id, limit),
    ).fetchall()


def state_of(conn: sqlite3.Connection, panda_id: int) -> str:
    return conn.execute("SELECT state FROM jobs WHERE panda_id = ?", (panda_id,)).fetchone()[0]


def get(conn: sqlite3.Connection, panda_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM jobs WHERE panda_id = ?", (panda_id,)).fetchone()


def brief(conn: sqlite3.Connection, panda_id: int) -> sqlite3.Row | None:
    """(task_id, jobset_id, state, no_more_ranges) of a job, None if it is not (or no longer) known."""
    return conn.execute(
        "SELECT task_id, jobset_id, state, no_more_ranges FROM jobs WHERE panda_id = ?", (panda_id,)
    ).fetchone()


def task_has_ranges_held(conn: sqlite3.Connection, task_id: int) -> bool:
    """Whether an unfinished job of the task holds a range (in stock or dispatched to a worker)."""
    return bool(
        conn.execute(
            "SELECT 1 FROM jobs j CROSS JOIN event_ranges e ON e.panda_id = j.panda_id AND e.state IN (?, ?) "
            "WHERE j.task_id = ? AND j.state IN (?, ?) LIMIT 1",
            (*(s.value for s in RANGE_HELD), task_id, *_ACTIVE),
        ).fetchall()
    )


def set_no_more_ranges(conn: sqlite3.Connection, panda_id: int, now: float) -> None:
    conn.execute("UPDATE jobs SET no_more_ranges = 1, updated_at = ? WHERE panda_id = ?", (now, panda_id))


def drained_for_waiting_siblings(conn: sqlite3.Connection, panda_id: int, now: float) -> int:
    """The service had no more ranges for this job: its pool (task and jobset) is the one its fetched siblings draw
    from, so those still waiting for their first worker get no worker for an empty pool. Each is marked no more
    ranges, and the propagator asks the service once (settle_jobs) whether ranges are ready again (more workers)
    or none are left (the job finishes, once no sibling here holds its task's ranges). The number marked."""
    return conn.execute(
        "UPDATE jobs SET no_more_ranges = 1, updated_at = ? WHERE state = ? AND no_more_ranges = 0 "
        "AND panda_id != ? AND (task_id, coalesce(jobset_id, task_id)) = "
        "(SELECT task_id, coalesce(jobset_id, task_id) FROM jobs WHERE panda_id = ?) AND NOT EXISTS "
        "(SELECT 1 FROM job_workers jw CROSS JOIN workers w ON w.id = jw.worker_id "
        f"WHERE jw.panda_id = jobs.panda_id AND jw.left_at IS NULL AND w.state IN ({_LIVE_MARKS}))",
        (now, J.FETCHED.value, panda_id, panda_id, *(s.value for s in WORKER_LIVE)),
    ).rowcount


def set_events_total(conn: sqlite3.Connection, panda_id: int, events_total: int, now: float) -> None:
    """Ranges are ready again for the job: it may get workers again, sized for `events_total`."""
    conn.execute(
        "UPDATE jobs SET no_more_ranges = 0, events_total = ?, updated_at = ? WHERE panda_id = ?",
        (events_total, now, panda_id),
    )


def reopen_for_ranges(conn: sqlite3.Connection, range_ids: list[str], now: float) -> None:
    """Jobs of the tasks of these (failed, now reported) ranges that still have workers may fetch again."""
    conn.execute(
        "UPDATE jobs SET no_more_ranges = 0, updated_at = ? WHERE no_more_ranges = 1 AND state IN (?, ?) "
        "AND task_id IN (SELECT j.task_id FROM event_ranges e JOIN jobs j ON j.panda_id = e.panda_id "
        # from the few queued/running workers to the job link, never through every worker the job ever had
        "WHERE e.range_id IN (SELECT value FROM json_each(?))) AND EXISTS (SELECT 1 FROM workers w "
        "CROSS JOIN job_workers jw ON jw.worker_id = w.id AND jw.panda_id = jobs.panda_id AND jw.left_at IS NULL "
        "WHERE w.state IN (?, ?))",
        (now, *_ACTIVE, json.dumps(range_ids), W.QUEUED.value, W.RUNNING.value),
    )


def add_events_done(conn: sqlite3.Connection, panda_id: int, n: int, now: float) -> None:
    conn.execute("UPDATE jobs SET events_done = events_done + ?, updated_at = ? WHERE panda_id = ?", (n, now, panda_id))


def blend_seconds_per_event(conn: sqlite3.Connection, panda_id: int, measured: float) -> None:
    """The task's estimate is only a start: shaping follows what the pilots measure (moving average)."""
    conn.execute(
        "UPDATE jobs SET seconds_per_event = CASE WHEN seconds_per_event IS NULL THEN ? "
        "ELSE 0.7 * seconds_per_event + 0.3 * ? END WHERE panda_id = ?",
        (measured, measured, panda_id),
    )


def without_work(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Unfinished jobs without a live worker and without a range dispatched: to be settled (finished or refilled)."""
    return conn.execute(
        "SELECT j.* FROM jobs j WHERE j.state IN (?, ?) AND NOT EXISTS (SELECT 1 FROM workers w CROSS JOIN "
        "job_workers jw ON jw.worker_id = w.id AND jw.panda_id = j.panda_id AND jw.left_at IS NULL "
        "WHERE w.state IN (?, ?, ?, ?)) "
        "AND NOT EXISTS (SELECT 1 FROM event_ranges e WHERE e.panda_id = j.panda_id AND e.state = ?)",
        (*_ACTIVE, *(s.value for s in WORKER_LIVE), R.DISPATCHED.value),
    ).fetchall()


def running_progress(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(panda_id, events_done) of the running jobs: the job heartbeat."""
    return conn.execute("SELECT panda_id, events_done FROM jobs WHERE state = ?", (J.RUNNING.value,)).fetchall()


def ranks_to_supply(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(panda_id, ranks) of running jobs that may get ranges, with the ranks of their queued and running workers."""
    return conn.execute(
        # from the active workers (CROSS JOIN keeps that order), never through all workers a job ever had
        "SELECT j.panda_id, sum(w.nodes * w.ranks_per_node) AS ranks FROM workers w "
        "CROSS JOIN job_workers jw ON jw.worker_id = w.id AND jw.left_at IS NULL "
        "CROSS JOIN jobs j ON j.panda_id = jw.panda_id "
        "WHERE j.state = ? AND j.no_more_ranges = 0 AND w.state IN (?, ?) GROUP BY j.panda_id",
        (J.RUNNING.value, W.QUEUED.value, W.RUNNING.value),
    ).fetchall()


def prunable(conn: sqlite3.Connection, ended_before: float, limit: int) -> list[int]:
    """Jobs that ended before `ended_before` whose workers all ended and had their access points removed."""
    ended = tuple(s.value for s in WORKER_ENDED)
    marks = ",".join("?" * len(ended))
    return [
        r[0]
        for r in conn.execute(
            f"SELECT panda_id FROM jobs WHERE state IN (?, ?, ?) AND updated_at < ? AND NOT EXISTS ("
            f"SELECT 1 FROM job_workers jw JOIN workers w ON w.id = jw.worker_id "
            f"WHERE jw.panda_id = jobs.panda_id "
            f"AND (w.state NOT IN ({marks}) OR w.cleaned_at IS NULL)) LIMIT ?",
            (*(s.value for s in JOB_ENDED), ended_before, *ended, limit),
        )
    ]


def delete(conn: sqlite3.Connection, panda_ids: list[int]) -> None:
    ids = ",".join("?" * len(panda_ids))
    conn.execute(f"DELETE FROM jobs WHERE panda_id IN ({ids})", panda_ids)


def count_by_state(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(state, count) rows."""
    return conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()


def count_by_queue_state(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(queue, state, n) rows."""
    return conn.execute("SELECT queue, state, count(*) AS n FROM jobs GROUP BY queue, state").fetchall()


def progress(conn: sqlite3.Connection, panda_id: int) -> sqlite3.Row | None:
    """(state, events_total, events_done, error_code, error_diag) of the job, None if it is not here."""
    return conn.execute(
        "SELECT state, events_total, events_done, error_code, error_diag FROM jobs WHERE panda_id=?", (panda_id,)
    ).fetchone()
