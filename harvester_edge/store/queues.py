"""The queues table: one row per configured queue (workers and jobs reference it) and its draining flag.

The row mirrors the config (daemon.sync_queues); a removed queue's row stays, since old rows reference it.
Draining is set by the operator (operations.set_draining) and read by the fetcher and the submitter.
"""

from __future__ import annotations

import sqlite3


def upsert(conn: sqlite3.Connection, name: str, batch: str, now: float, *, draining: bool | None = None) -> None:
    """Create or update the queue's row; `draining` None leaves the flag as it is (a new row is not draining)."""
    flag = None if draining is None else int(draining)
    conn.execute(
        "INSERT INTO queues (name, batch, draining, updated_at) VALUES (?, ?, coalesce(?, 0), ?) "
        "ON CONFLICT (name) DO UPDATE SET batch = excluded.batch, draining = coalesce(?, draining), "
        "updated_at = excluded.updated_at",
        (name, batch, flag, now, flag),
    )


def draining_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM queues WHERE draining = 1")}


def is_draining(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT draining FROM queues WHERE name = ?", (name,)).fetchone()
    return bool(row and row[0])


def all_queues(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(name, batch, draining, updated_at) of every queue, by name."""
    return conn.execute("SELECT name, batch, draining, updated_at FROM queues ORDER BY name").fetchall()


def draining_by_name(conn: sqlite3.Connection) -> dict[str, int]:
    return {r[0]: r[1] for r in conn.execute("SELECT name, draining FROM queues")}


def set_pledge(
    conn: sqlite3.Connection, name: str, cores_per_node: int, pledged_cores: int | None, opportunistic: bool
) -> None:
    """The queue's cores per node, pledge and opportunistic flag, as configured (the monitor's pledge view)."""
    conn.execute(
        "INSERT INTO queue_pledges (name, cores_per_node, pledged_cores, opportunistic) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET cores_per_node = excluded.cores_per_node, "
        "pledged_cores = excluded.pledged_cores, opportunistic = excluded.opportunistic",
        (name, cores_per_node, pledged_cores, int(opportunistic)),
    )


def pledges(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(name, cores_per_node, pledged_cores, opportunistic) of every configured queue, by name."""
    return conn.execute(
        "SELECT name, cores_per_node, pledged_cores, opportunistic FROM queue_pledges ORDER BY name"
    ).fetchall()
