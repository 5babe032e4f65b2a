"""The payload_log_offsets and payload_log_done tables: how far each worker's payload log files were shipped.

An offset is written only after the central service took the lines before it, so a daemon killed in between sends
that batch again (the service stores each line once: source and offset). A worker whose files were all shipped
after it ended is done and not looked at again.
"""

from __future__ import annotations

import sqlite3

from harvester_edge.states import WORKER_ENDED, WorkerState

_STATES = (WorkerState.RUNNING.value, *(s.value for s in WORKER_ENDED))


def to_ship(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """(id, access_point, state) of workers whose payload logs may hold unsent lines: running, or ended and not
    done, with their access point still there; oldest first."""
    marks = ",".join("?" * len(_STATES))
    return conn.execute(
        f"SELECT id, access_point, state FROM workers w WHERE state IN ({marks}) AND cleaned_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM payload_log_done d WHERE d.worker_id = w.id) ORDER BY id LIMIT ?",
        (*_STATES, limit),
    ).fetchall()


def offsets(conn: sqlite3.Connection, worker_id: int) -> dict[str, tuple[int, str | None]]:
    """name -> (offset, error) of a worker's files."""
    rows = conn.execute("SELECT name, shipped_to, error FROM payload_log_offsets WHERE worker_id = ?", (worker_id,))
    return {r[0]: (int(r[1]), r[2]) for r in rows}


def set_offset(conn: sqlite3.Connection, worker_id: int, name: str, offset: int, error: str | None, now: float) -> None:
    conn.execute(
        "INSERT INTO payload_log_offsets (worker_id, name, shipped_to, error, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (worker_id, name) DO UPDATE SET shipped_to = excluded.shipped_to, error = excluded.error, "
        "updated_at = excluded.updated_at",
        (worker_id, name, offset, error, now),
    )


def mark_done(conn: sqlite3.Connection, worker_id: int, now: float) -> None:
    conn.execute("INSERT OR IGNORE INTO payload_log_done (worker_id, done_at) VALUES (?, ?)", (worker_id, now))


def errors(conn: sqlite3.Connection, worker_id: int) -> dict[str, str]:
    """name -> why a worker's payload log file is not shipped (the monitor shows it)."""
    rows = conn.execute(
        "SELECT name, error FROM payload_log_offsets WHERE worker_id = ? AND error IS NOT NULL", (worker_id,)
    )
    return {r[0]: r[1] for r in rows}


def forget_gone(conn: sqlite3.Connection) -> int:
    """Rows of workers the book no longer holds (pruned after keep_history)."""
    n = conn.execute("DELETE FROM payload_log_offsets WHERE worker_id NOT IN (SELECT id FROM workers)").rowcount
    return n + conn.execute("DELETE FROM payload_log_done WHERE worker_id NOT IN (SELECT id FROM workers)").rowcount
