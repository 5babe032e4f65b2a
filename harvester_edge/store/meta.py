"""The meta table: key/value facts about this database (install_id: part of every batch job name)."""

from __future__ import annotations

import sqlite3


def install_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key = 'install_id'").fetchone()[0]


def set_install_id(conn: sqlite3.Connection, value: str | None) -> None:
    """Replay only: batch job names recorded under another install id must come out the same."""
    conn.execute("UPDATE meta SET value = ? WHERE key = 'install_id'", (value,))


def archive_dir(conn: sqlite3.Connection) -> str | None:
    """Where the daemon archives ended access points (paths.archives), for the monitor; None: not archived."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'archive_dir'").fetchone()
    return row[0] if row and row[0] else None


def set_archive_dir(conn: sqlite3.Connection, value: str | None) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('archive_dir', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (value or "",),
    )


def set_work_shortage(conn: sqlite3.Connection, shortage: bool, now: float) -> None:
    """What the central service said last about a WORK_SHORTAGE ("1"/"0" and when): the submitter reads it."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('work_shortage', ?) ON CONFLICT (key) DO UPDATE SET value = "
        "excluded.value",
        (f"{int(shortage)} {now}",),
    )


def work_shortage(conn: sqlite3.Connection) -> tuple[bool, float] | None:
    """(shortage, when it was heard) or None if never asked."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'work_shortage'").fetchone()
    if row is None:
        return None
    flag, when = row[0].split()
    return flag == "1", float(when)
