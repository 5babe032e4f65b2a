"""The work-shortage mode (meta key work_shortage) and whether work waits (central/shortage.py decides)."""

from __future__ import annotations

from .conn import Conn

KEY = "work_shortage"


def mode(conn: Conn) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (KEY,)).fetchone()
    return None if row is None else str(row[0])


def set_mode(conn: Conn, value: str) -> None:
    conn.execute("DELETE FROM meta WHERE key=?", (KEY,))
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (KEY, value))


def has_work(conn: Conn) -> bool:
    """A ready range or an activated job of a defined or running task (two index probes)."""
    ready = conn.execute(
        "SELECT 1 FROM ranges r JOIN tasks t USING (task_id) WHERE r.panda_id IS NULL AND r.status=0 "
        "AND t.status IN ('defined', 'running') LIMIT 1"
    ).fetchone()
    if ready is not None:
        return True
    return (
        conn.execute(
            "SELECT 1 FROM jobs j JOIN tasks t USING (task_id) WHERE j.status='activated' "
            "AND t.status IN ('defined', 'running') LIMIT 1"
        ).fetchone()
        is not None
    )
