"""Open the bookkeeping database: WAL, busy timeout, migrations, and a refusal of what cannot work.

One `Store` per process; each thread gets its own connection from `store.connection()`. Writes go through
`store.write()`, one BEGIN IMMEDIATE transaction per agent cycle: taking the write lock up front means a writer
waits in busy_timeout instead of failing on a lock upgrade, and readers (WAL) never wait for writers.
Writers of this process queue on an in-process mutex first: SQLite admits one writer at a time anyway, and its
busy handler polls with sleeps of up to 100 ms, which caps 4 contending threads at ~45 commits/s; the mutex hands
the lock over at once. Other processes (the CLI) still meet busy_timeout. Reads take no lock at all.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import psutil
import sqlite_utils

from harvester_edge.errors import StoreError
from harvester_edge.filemodes import private_database, private_dir
from harvester_edge.store.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smbfs",
    "smb3",
    "lustre",
    "gpfs",
    "beegfs",
    "fuse.sshfs",
    "panfs",
    "ceph",
    "fuse.glusterfs",
    "glusterfs",
    "afs",
    "9p",
    "wekafs",
    "fuse.ceph-fuse",
}


class SchemaTooNew(StoreError):
    """The database was written by a newer harvester-edge than this one."""


class NetworkFileSystem(StoreError):
    """The database sits on a network file system, where SQLite's WAL locking does not work."""


def filesystem_type(path: Path) -> str:
    """The file system type of the mount that holds `path` (longest matching mount point)."""
    path = path.resolve()
    best, fstype = "", "unknown"
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, part.fstype
    return fstype


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


class Store:
    """The harvester's SQLite file. Cheap to pass around; connections are opened lazily per thread."""

    def __init__(self, path: Path, factory: type[sqlite3.Connection] = sqlite3.Connection) -> None:
        self.path = Path(path)
        self.factory = factory  # the connection class (the scale simulation's chaos wraps statements)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # autocommit mode: transactions are begun explicitly in write()
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
                factory=self.factory,
            )
            conn.row_factory = sqlite3.Row
            _configure(conn)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view of this thread's connection (schema work, ad-hoc queries)."""
        return sqlite_utils.Database(self.connection())

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); rolled back if the block raises."""
        conn = self.connection()
        if conn.in_transaction:  # nested: a savepoint, so an inner failure does not undo the outer work
            name = f"sp{id(conn)}_{time.monotonic_ns()}"
            conn.execute(f"SAVEPOINT {name}")
            try:
                yield conn
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            conn.execute(f"RELEASE {name}")
            return
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


def free_pages(conn: sqlite3.Connection) -> int:
    """Pages freed by deletes that SQLite reuses before it grows the file (no auto or incremental vacuum)."""
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def row_counts(conn: sqlite3.Connection, tables: tuple[str, ...]) -> dict[str, int]:
    """Rows per table, for tables named by the code (never by input)."""
    return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='migrations'").fetchone()
    if not exists:
        return []
    return [row[0] for row in conn.execute("SELECT name FROM migrations ORDER BY id")]


def open_store(
    path: Path,
    on_network_fs: Literal["warn", "refuse"] = "warn",
    factory: type[sqlite3.Connection] = sqlite3.Connection,
) -> Store:
    """Open (creating if needed) and migrate the database at `path`; refuses a newer schema or, if asked, NFS.
    `factory`: the class of its connections (sqlite3.connect's factory)."""
    path = Path(path)
    try:
        private_dir(path.parent, tighten=False)  # a folder it makes is 0700; the daemon tightens the work dir
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the database folder: {exc}") from exc
    fstype = filesystem_type(path.parent)
    if fstype in NETWORK_FS or fstype.startswith("nfs"):
        message = (
            f"{path}: the bookkeeping database is on a network file system ({fstype}); SQLite's locking "
            "is unreliable there. Put paths.db on local disk"
        )
        if on_network_fs == "refuse":
            raise NetworkFileSystem(message + " (daemon.on_network_fs: refuse)")
        log.warning("%s", message)
    try:
        private_database(path)  # 0600 before SQLite opens it: its -wal/-shm files take the same mode
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the database file with mode 0600: {exc}") from exc
    store = Store(path, factory)
    try:
        conn = store.connection()
        migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        store.close()
        raise StoreError(f"{path}: not a usable harvester-edge database: {exc}") from exc
    except StoreError:
        store.close()
        raise
    return store


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    known = [name for name, _ in MIGRATIONS]
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations "
            "(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at REAL NOT NULL)"
        )
        applied = applied_migrations(conn)
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise SchemaTooNew(
                f"{path}: the database has schema migrations this harvester-edge does not know ({', '.join(unknown)}); "
                f"it was written by a newer version (this one knows {SCHEMA_VERSION}). Upgrade harvester-edge, "
                "or point paths.db at another file"
            )
        for name, step in MIGRATIONS:
            if name in applied:
                continue
            log.info("applying schema migration %s to %s", name, path)
            step(conn)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
