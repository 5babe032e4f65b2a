"""tasks: one row per task (its spec, status, counted job failures and last diag)."""

from __future__ import annotations

import sqlite3

from .conn import Conn
from .pg import is_pg


def insert(conn: Conn, values: tuple) -> int | None:
    """values: (name, payload, n_events, events_per_range, seconds_per_event, memory_per_rank_mb, max_attempts,
    n_jobs, guid, status, created, modified, kind, job_spec); the new task_id."""
    cur = conn.execute(
        "INSERT INTO tasks (name, payload, n_events, events_per_range, seconds_per_event, memory_per_rank_mb, "
        "max_attempts, n_jobs, guid, status, created, modified, kind, job_spec) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING task_id",
        values,
    )
    return cur.fetchone()[0]


def get(conn: Conn, task_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()


def of_job(conn: Conn, task_id: int) -> sqlite3.Row:
    """The task of an existing job (the foreign key jobs.task_id guarantees it exists)."""
    row: sqlite3.Row = conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    return row


def lock(conn: Conn, task_id: int) -> sqlite3.Row:
    """The task, locked FOR UPDATE on PostgreSQL: two processes finishing a task's last ranges at once would
    each see the other's (uncommitted) ranges in flight and neither close the task; serialized, the second
    sees the first's commit. SQLite has one writer: a plain read."""
    sql = "SELECT * FROM tasks WHERE task_id=?" + (" FOR UPDATE" if is_pg(conn) else "")
    row: sqlite3.Row = conn.execute(sql, (task_id,)).fetchone()
    return row


def all_tasks(conn: Conn) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM tasks ORDER BY task_id").fetchall()


def status(conn: Conn, task_id: int) -> str:
    return conn.execute("SELECT status FROM tasks WHERE task_id=?", (task_id,)).fetchone()[0]


def max_attempts(conn: Conn, task_id: int) -> sqlite3.Row:
    """A row with the max_attempts of an existing range's task (the foreign key ranges.task_id guarantees it)."""
    row: sqlite3.Row = conn.execute("SELECT max_attempts FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    return row


def start(conn: Conn, task_id: int, now: float) -> None:
    """A defined task becomes running (its first job was dispatched)."""
    conn.execute("UPDATE tasks SET status='running', modified=? WHERE task_id=? AND status='defined'", (now, task_id))


def count_failure(conn: Conn, task_id: int, diag: str) -> None:
    """One more counted job failure, with its diag."""
    conn.execute("UPDATE tasks SET job_failures = job_failures + 1, diag=? WHERE task_id=?", (diag, task_id))


def close(conn: Conn, task_id: int, status: str, diag: str, now: float) -> None:
    conn.execute("UPDATE tasks SET status=?, diag=?, modified=? WHERE task_id=?", (status, diag, now, task_id))


def abort(conn: Conn, task_id: int, aborted: str, now: float) -> None:
    conn.execute(
        "UPDATE tasks SET status=?, diag='killed by operator', modified=? WHERE task_id=?", (aborted, now, task_id)
    )


def reopen(conn: Conn, task_id: int, now: float) -> None:
    """The task runs again with no counted failures."""
    conn.execute(
        "UPDATE tasks SET status='running', job_failures=0, diag='', modified=? WHERE task_id=?", (now, task_id)
    )


def set_dispatch(conn: Conn, task_id: int, priority: int, share: float | None, now: float) -> None:
    """The task's dispatch priority and share (central/dispatch_order.py)."""
    conn.execute("UPDATE tasks SET priority=?, share=?, modified=? WHERE task_id=?", (priority, share, now, task_id))


def set_scouts(conn: Conn, task_id: int, n_scouts: int, wait: bool, cores_per_rank: int) -> None:
    """The task's first n_scouts ranges are its scouts; wait: the others are held back until none is open
    (`scouting`); cores one rank needs."""
    conn.execute(
        "UPDATE tasks SET n_scouts=?, scouting=?, cores_per_rank=? WHERE task_id=?",
        (n_scouts, int(n_scouts > 0 and wait), cores_per_rank, task_id),
    )


def scout_fields(conn: Conn, task_id: int) -> sqlite3.Row | None:
    """(n_scouts, scouting) of the task."""
    return conn.execute("SELECT n_scouts, scouting FROM tasks WHERE task_id=?", (task_id,)).fetchone()


def add_scout_measures(conn: Conn, task_id: int, n: int, events: int, seconds: float, pss_mb: int) -> None:
    """n more scouts finished: their events and wall seconds add up, their highest PSS (MB; 0: none measured)."""
    conn.execute(
        "UPDATE tasks SET scouts_done = scouts_done + ?, scout_events = scout_events + ?, "
        "scout_seconds = scout_seconds + ?, "
        "scout_pss_mb = CASE WHEN ? > coalesce(scout_pss_mb, 0) THEN ? ELSE scout_pss_mb END WHERE task_id=?",
        (n, events, seconds, pss_mb, pss_mb, task_id),
    )


def end_scouting(conn: Conn, task_id: int) -> None:
    conn.execute("UPDATE tasks SET scouting=0 WHERE task_id=?", (task_id,))
