"""Messages for the central service, kept in the DB until it has taken them (survives outages and restarts).

Written in the same transaction as the state change they report, drained in id order by the propagator.
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
    return int(cur.lastrowid)


def pending(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT * FROM outbox WHERE state = ? ORDER BY id LIMIT ?", (OutboxState.PENDING.value, limit)
    ).fetchall()


def depth(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM outbox WHERE state = ?", (OutboxState.PENDING.value,)).fetchone()[0]
