"""The state_history table: one row per state change (rows.transition writes them), append-only, pruned by age."""

from __future__ import annotations

import sqlite3


def prune(conn: sqlite3.Connection, limit: int, before: float) -> int:
    """Delete up to `limit` of the oldest rows if older than `before` (ids grow with time: no table scan)."""
    return conn.execute(
        "DELETE FROM state_history WHERE id IN (SELECT id FROM state_history ORDER BY id LIMIT ?) AND at < ?",
        (limit, before),
    ).rowcount


def of_object(conn: sqlite3.Connection, kind: str, object_id: object) -> list[sqlite3.Row]:
    """(src, dst, at, reason) of one object's changes, oldest first (kind: the table, e.g. "workers")."""
    return conn.execute(
        "SELECT src, dst, at, reason FROM state_history WHERE kind=? AND object_id=? ORDER BY id",
        (kind, str(object_id)),
    ).fetchall()
