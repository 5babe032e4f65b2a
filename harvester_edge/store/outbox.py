"""The outbox table: messages for the central service, kept until it has taken them (survives outages, restarts).

A message is written in the same transaction as the state change it reports, drained in id order by the propagator
(PENDING -> SENT, or REJECTED for good: kept for the operator). Nothing is pruned while a message is pending.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from harvester_edge.states import OutboxState

KINDS = ("update_event_ranges", "update_jobs")


def enqueue(conn: sqlite3.Connection, kind: str, payload: Any, now: float) -> int:
    if kind not in KINDS:
        raise ValueError(f"outbox kind {kind!r} is not one of {KINDS}")
    cur = conn.execute(
        "INSERT INTO outbox (kind, state, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        (kind, OutboxState.PENDING.value, json.dumps(payload), now, now),
    )
    return int(cur.lastrowid or 0)


def enqueue_many(conn: sqlite3.Connection, kind: str, payloads: list[Any], now: float) -> None:
    """enqueue() of several messages of one kind, in order, in one statement."""
    if kind not in KINDS:
        raise ValueError(f"outbox kind {kind!r} is not one of {KINDS}")
    conn.executemany(
        "INSERT INTO outbox (kind, state, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        [(kind, OutboxState.PENDING.value, json.dumps(p), now, now) for p in payloads],
    )


def pending(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM outbox WHERE state = ? ORDER BY id LIMIT ?", (OutboxState.PENDING.value, limit)
    ).fetchall()


def depth(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM outbox WHERE state = ?", (OutboxState.PENDING.value,)).fetchone()[0]


def any_pending(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM outbox WHERE state = ? LIMIT 1", (OutboxState.PENDING.value,)).fetchone()
        is not None
    )


def range_reports_pending(conn: sqlite3.Connection) -> bool:
    """Whether a range report waits to be sent (a failed/not-done report makes its range ready again)."""
    return bool(
        conn.execute("SELECT 1 FROM outbox WHERE state = 'pending' AND kind = 'update_event_ranges' LIMIT 1").fetchall()
    )


def count_failed_try(conn: sqlite3.Connection, message_id: int, error: str, now: float) -> None:
    """A try that failed; the message stays pending."""
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?, updated_at = ? WHERE id = ?",
        (error, now, message_id),
    )


def count_given_up_try(conn: sqlite3.Connection, message_id: int, error: str) -> None:
    """A try counted before the message is marked sent anyway (with its transition, which sets updated_at)."""
    conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, message_id))


def set_error(conn: sqlite3.Connection, message_id: int, error: str) -> None:
    conn.execute("UPDATE outbox SET last_error = ? WHERE id = ?", (error, message_id))


def prune_sent(conn: sqlite3.Connection, limit: int, before: float) -> int:
    """Delete up to `limit` of the oldest messages if sent before `before` (ids grow with time: no table scan)."""
    return conn.execute(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?) AND state = ? AND updated_at < ?",
        (limit, OutboxState.SENT.value, before),
    ).rowcount


def count_by_state(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(state, count) rows."""
    return conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()


def rejected_since(conn: sqlite3.Connection, since: float) -> int:
    """Messages the central service refused for good after `since` (the outbox_rejected alert)."""
    return conn.execute(
        "SELECT count(*) FROM outbox WHERE state = ? AND updated_at > ?", (OutboxState.REJECTED.value, since)
    ).fetchone()[0]
