"""Read-only opens of a database file, for the readers outside the daemon (status, monitor, metrics, demo, CLI).

SQLite in WAL mode: a read-only connection never blocks the daemon's writers, and the daemon never blocks it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_readonly(path: Path | str, *, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to the database file at `path` (rows as sqlite3.Row; usable from other threads).

    Raises sqlite3.OperationalError if the file cannot be opened; callers that may run before the daemon ever
    created it check that it exists first.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn
