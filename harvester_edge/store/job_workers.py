"""The job_workers table: which workers run which jobs (many to many; rows are never changed, only pruned).

A pilot may ask ranges and get a credential for the jobs linked to its worker only (feeder, credentials).
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
