"""The meta table: key/value facts about this database (install_id: part of every batch job name)."""

from __future__ import annotations

import sqlite3


def install_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key = 'install_id'").fetchone()[0]


def set_install_id(conn: sqlite3.Connection, value: str | None) -> None:
    """Replay only: batch job names recorded under another install id must come out the same."""
    conn.execute("UPDATE meta SET value = ? WHERE key = 'install_id'", (value,))
