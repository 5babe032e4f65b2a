"""The job_workers table: which workers run which jobs (many to many; rows are never changed, only pruned).

A pilot may ask ranges and get a credential for the jobs linked to its worker only (feeder, credentials). A
persistent pilot's next job is linked with the job request it answers (request_seq); its earlier links then get
left_at: the worker runs them no more, so they settle (jobs.without_work) while the worker goes on.
"""

from __future__ import annotations

import sqlite3


def link(conn: sqlite3.Connection, panda_id: int, worker_id: int) -> None:
    conn.execute("INSERT INTO job_workers (panda_id, worker_id) VALUES (?, ?)", (panda_id, worker_id))


def jobs_of_worker(conn: sqlite3.Connection, worker_id: int) -> list[int]:
    """The worker's jobs, by panda_id (the job_workers_worker index holds them in that order)."""
    return [
        r[0]
        for r in conn.execute("SELECT panda_id FROM job_workers WHERE worker_id = ? ORDER BY panda_id", (worker_id,))
    ]


def workers_of_jobs(conn: sqlite3.Connection, panda_ids: list[int]) -> list[int]:
    ids = ",".join("?" * len(panda_ids))
    return [
        r[0] for r in conn.execute(f"SELECT DISTINCT worker_id FROM job_workers WHERE panda_id IN ({ids})", panda_ids)
    ]


def delete_of_jobs(conn: sqlite3.Connection, panda_ids: list[int]) -> None:
    ids = ",".join("?" * len(panda_ids))
    conn.execute(f"DELETE FROM job_workers WHERE panda_id IN ({ids})", panda_ids)


def hand_over(conn: sqlite3.Connection, panda_id: int, worker_id: int, request_seq: int, now: float) -> None:
    """A persistent pilot's next job (answering its job request `request_seq`): the worker leaves its other jobs."""
    conn.execute(
        "UPDATE job_workers SET left_at = ? WHERE worker_id = ? AND panda_id != ? AND left_at IS NULL",
        (now, worker_id, panda_id),
    )
    conn.execute(
        "INSERT INTO job_workers (panda_id, worker_id, request_seq) VALUES (?, ?, ?) "
        "ON CONFLICT (panda_id, worker_id) DO UPDATE SET request_seq = excluded.request_seq, left_at = NULL",
        (panda_id, worker_id, request_seq),
    )


def job_of_request(conn: sqlite3.Connection, worker_id: int, request_seq: int) -> int | None:
    """The job already handed for this job request (a crash came before its answer was written), else None."""
    row = conn.execute(
        "SELECT panda_id FROM job_workers WHERE worker_id = ? AND request_seq = ?", (worker_id, request_seq)
    ).fetchone()
    return None if row is None else int(row[0])


def leave(conn: sqlite3.Connection, worker_id: int, keep_seq: int, now: float) -> int:
    """A persistent pilot asked for a job (request `keep_seq`): it runs its jobs no more (the link of a job already
    handed for that request stays); how many links were left."""
    return conn.execute(
        "UPDATE job_workers SET left_at = ? WHERE worker_id = ? AND left_at IS NULL "
        "AND (request_seq IS NULL OR request_seq != ?)",
        (now, worker_id, keep_seq),
    ).rowcount
