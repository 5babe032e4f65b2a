"""The central service's SQLite file: schema, migration, per-thread readers and ONE writer with group commit.

Every write is a function `fn(conn, *args)` run inside a SAVEPOINT; the writer thread batches the writes of
concurrent requests into one transaction (one fsync for many requests). A write that raises is rolled back to
its savepoint alone: the others in the batch still commit, and a rejected request has written nothing.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harvester_edge.errors import StoreError
from harvester_edge.filemodes import private_database, private_dir
from harvester_edge.store.readonly import open_readonly

from ..classify import SEEDED_RULES
from . import pg, rules
from .groupcommit import Call, GroupCommit

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, payload TEXT NOT NULL,
    n_events INTEGER NOT NULL, events_per_range INTEGER NOT NULL, seconds_per_event REAL NOT NULL,
    memory_per_rank_mb INTEGER NOT NULL, max_attempts INTEGER NOT NULL, n_jobs INTEGER NOT NULL,
    job_failures INTEGER NOT NULL DEFAULT 0, guid TEXT NOT NULL,
    status TEXT NOT NULL, diag TEXT NOT NULL DEFAULT '', created REAL NOT NULL, modified REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'jumbo', job_spec TEXT,
    priority INTEGER NOT NULL DEFAULT 0, share REAL);
CREATE TABLE IF NOT EXISTS jobs (
    panda_id INTEGER PRIMARY KEY AUTOINCREMENT, task_id INTEGER NOT NULL REFERENCES tasks(task_id),
    status TEXT NOT NULL, attempt_nr INTEGER NOT NULL, command TEXT,
    site TEXT, harvester_id TEXT, worker_id TEXT, node TEXT,
    created REAL NOT NULL, modified REAL NOT NULL, heartbeat REAL, start_time REAL, end_time REAL,
    n_events INTEGER NOT NULL DEFAULT 0, core_count INTEGER,
    pilot_error_code INTEGER NOT NULL DEFAULT 0, pilot_error_diag TEXT NOT NULL DEFAULT '',
    exe_error_code INTEGER NOT NULL DEFAULT 0, exe_error_diag TEXT NOT NULL DEFAULT '',
    trans_exit_code INTEGER NOT NULL DEFAULT 0,
    dispatcher_error_code INTEGER NOT NULL DEFAULT 0, dispatcher_error_diag TEXT NOT NULL DEFAULT '',
    state_history TEXT, pilot_id TEXT, pilot_timing TEXT, cpu_time REAL, cpu_unit TEXT, max_rss INTEGER,
    pilot_log TEXT, log_file TEXT);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, task_id);
CREATE TABLE IF NOT EXISTS ranges (
    task_id INTEGER NOT NULL REFERENCES tasks(task_id), process_id INTEGER NOT NULL,
    start_event INTEGER NOT NULL, last_event INTEGER NOT NULL,
    status INTEGER NOT NULL, attempt_nr INTEGER NOT NULL DEFAULT 0, panda_id INTEGER,
    failures INTEGER NOT NULL DEFAULT 0, error_code INTEGER, error_diag TEXT, modified REAL,
    PRIMARY KEY (task_id, process_id)) WITHOUT ROWID;
-- one partial index: a claim leaves it, a finish touches no index at all. Finding a job's in-flight ranges
-- scans the task (job ends and a task's last requests only): cheaper overall than a second index.
-- Its predicate is "no holder" (a ready range has none), not status: a finish changes status only, so on
-- PostgreSQL it is a HOT update (no index entry, with the table's fillfactor leaving room on the page).
-- ranges_ready (WHERE status = 0) was the first form: upgrade_indexes drops it.
CREATE INDEX IF NOT EXISTS ranges_unheld ON ranges(task_id, process_id) WHERE panda_id IS NULL;
CREATE TABLE IF NOT EXISTS workers (
    harvester_id TEXT NOT NULL, worker_id TEXT NOT NULL, status TEXT, pilot_status TEXT, site TEXT, node TEXT,
    attrs TEXT, modified REAL NOT NULL, PRIMARY KEY (harvester_id, worker_id));
CREATE TABLE IF NOT EXISTS worker_nodes (
    site TEXT NOT NULL, host_name TEXT NOT NULL, attrs TEXT, gpus TEXT, modified REAL NOT NULL,
    PRIMARY KEY (site, host_name));
CREATE TABLE IF NOT EXISTS harvesters (harvester_id TEXT PRIMARY KEY, last_heartbeat REAL, attrs TEXT);
CREATE TABLE IF NOT EXISTS error_classes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL, code INTEGER NOT NULL,
    diag_pattern TEXT NOT NULL DEFAULT '', class TEXT NOT NULL, status TEXT NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0, example TEXT NOT NULL DEFAULT '', created REAL NOT NULL,
    UNIQUE (source, code, diag_pattern));
-- who changed which error rule when (errors add / edit / delete / promote): the rule as it was and became (JSON)
CREATE TABLE IF NOT EXISTS error_class_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule_id INTEGER NOT NULL, action TEXT NOT NULL, who TEXT NOT NULL,
    at REAL NOT NULL, before TEXT, after TEXT);
CREATE TABLE IF NOT EXISTS token_keys (
    client_name TEXT NOT NULL, key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
    scope TEXT, parent TEXT, claims TEXT);
CREATE INDEX IF NOT EXISTS token_keys_client ON token_keys(client_name, created);
-- pilots' payload output, one row per line (central/paylogs.py): unique by the harvester's file and byte offset
CREATE TABLE IF NOT EXISTS payload_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, panda_id INTEGER NOT NULL, task_id INTEGER NOT NULL,
    harvester_id TEXT NOT NULL, worker_id INTEGER, rank_nr INTEGER NOT NULL, range_id TEXT, stream TEXT NOT NULL,
    at REAL NOT NULL, msg TEXT NOT NULL, source TEXT NOT NULL, src_offset INTEGER NOT NULL,
    UNIQUE (harvester_id, source, src_offset));
CREATE INDEX IF NOT EXISTS payload_logs_job ON payload_logs(panda_id, id);
CREATE INDEX IF NOT EXISTS payload_logs_task ON payload_logs(task_id, id);
CREATE TABLE IF NOT EXISTS payload_log_totals (
    panda_id INTEGER PRIMARY KEY, bytes INTEGER NOT NULL DEFAULT 0, lines INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0);
"""


# Columns added after schema 1 shipped: table -> (name, SQL type). Old DBs get them in place on open.
TOKEN_KEY_COLUMNS = (("scope", "TEXT"), ("parent", "TEXT"), ("claims", "TEXT"))
ADDED_COLUMNS = {
    "token_keys": TOKEN_KEY_COLUMNS,
    # task kinds (jumbo / ordinary / eventservice) and what an ordinary job runs (JSON)
    "tasks": (
        ("kind", "TEXT NOT NULL DEFAULT 'jumbo'"),
        ("job_spec", "TEXT"),
        # dispatch order (higher first) and the fraction of running jobs a task may hold (NULL: no limit)
        ("priority", "INTEGER NOT NULL DEFAULT 0"),
        ("share", "REAL"),
    ),
    # what the PanDA pilot reports: state history (JSON list), pilot id, timing, CPU, log tail, log file
    "jobs": (
        ("state_history", "TEXT"),
        ("pilot_id", "TEXT"),
        ("pilot_timing", "TEXT"),
        ("cpu_time", "REAL"),
        ("cpu_unit", "TEXT"),
        ("max_rss", "INTEGER"),
        ("pilot_log", "TEXT"),
        ("log_file", "TEXT"),
    ),
}
# brokerage by resources and scouts (central/brokerage.py, central/scouts.py): a task's scouts and what they measured,
# cores per rank; a job's queue (computing element) and the memory per rank it offers
ADDED_COLUMNS["tasks"] += (
    ("n_scouts", "INTEGER NOT NULL DEFAULT 0"),
    ("scouting", "INTEGER NOT NULL DEFAULT 0"),
    ("scouts_done", "INTEGER NOT NULL DEFAULT 0"),
    ("scout_events", "INTEGER NOT NULL DEFAULT 0"),
    ("scout_seconds", "REAL NOT NULL DEFAULT 0"),
    ("scout_pss_mb", "INTEGER"),
    ("cores_per_rank", "INTEGER NOT NULL DEFAULT 1"),
)
ADDED_COLUMNS["jobs"] += (("computing_element", "TEXT"), ("mem_limit_mb", "INTEGER"))


def upgrade_columns(conn: Any) -> None:
    """Add the columns a schema-1 DB made before them lacks (ADDED_COLUMNS); the same on both backends."""
    for table, columns in ADDED_COLUMNS.items():
        if pg.is_pg(conn):
            sql = (
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name=?"
            )
            have = {row[0] for row in conn.execute(sql, (table,))}
        else:
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in have:
                conn.execute(
                    f"ALTER TABLE {table} ADD COLUMN {name} {pg.column_type(kind) if pg.is_pg(conn) else kind}"
                )
                log.info("central DB: %s gained column %s", table, name)


def upgrade_indexes(conn: Any) -> None:
    """Retire ranges_ready (WHERE status = 0; ranges_unheld, WHERE panda_id IS NULL, replaces it): a ready range
    that still names a holder loses it first, so the new index holds every ready range. The same on both
    backends; only where the old index is still there (once per database)."""
    if pg.is_pg(conn):
        sql = "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'ranges_ready'"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'ranges_ready'"
    if conn.execute(sql).fetchone() is None:
        return
    conn.execute("UPDATE ranges SET panda_id = NULL WHERE status = 0 AND panda_id IS NOT NULL")
    conn.execute("DROP INDEX IF EXISTS ranges_ready")
    log.info("central DB: index ranges_ready replaced by ranges_unheld")


def check_version(conn: Any, where: str) -> None:
    """A new DB gets the schema version and the seeded rules; a DB newer than this code is refused."""
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:  # a new DB
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        rules.seed(conn, SEEDED_RULES, time.time())
    elif int(row[0]) > SCHEMA_VERSION:
        raise StoreError(
            f"central DB {where} has schema {row[0]}, newer than this code's "
            f"{SCHEMA_VERSION}: upgrade harvester-edge or point central.db elsewhere"
        )


def open_database(target: Path | str, files_dir: Path | None = None, pool: Any = None) -> Database | pg.PgDatabase:
    """The central DB named by central.db: a SQLite file (the default) or a postgresql:// URL, opened and migrated.

    files_dir: where a PostgreSQL-backed service keeps its files (signing secret, jedilog); pool: PoolSettings."""
    if pg.is_postgresql_url(target):
        if files_dir is None:
            raise StoreError(
                f"central.db {pg.redact(str(target))}: no folder for the service's files (central.files_dir)"
            )
        options = pool.model_dump() if pool is not None else {}
        return pg.PgDatabase(str(target), files_dir, **options).open()
    return Database(Path(target)).open()


@contextlib.contextmanager
def reading(target: Path | str) -> Iterator[Any]:
    """A read-only view of the central DB for a process that is not the service (the CLI's views, /metrics, the
    alerts agent), closed on exit. A SQLite file is opened read-only (safe next to a running service); a
    postgresql:// URL gets a reader of one pooled connection, nothing created or migrated, no writer (a database
    without the schema, or newer than this code, is refused as open_database does). Raises StoreError (and its
    DatabaseUnreachable) or sqlite3.Error."""
    if not pg.is_postgresql_url(target):
        conn = open_readonly(Path(target))
        try:
            yield conn
        finally:
            conn.close()
        return
    db = pg.PgDatabase(str(target), Path(tempfile.gettempdir()), pool_size=1)
    try:
        reader = db.reader()
        if reader.execute("SELECT to_regclass('meta')").fetchone()[0] is None:  # type: ignore[index]
            raise StoreError(f"central DB {db} has no central service schema: run `harvester-edge central db migrate`")
        check_version(reader, str(db))
        yield reader
    finally:
        db.close()


upgrade_token_keys = upgrade_columns  # the name issue 11 gave it


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, busy_timeout."""
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    # a larger page cache: the hot pages (ready index, recent ranges) stay in memory, fewer reads per request
    conn.execute("PRAGMA cache_size=-65536")
    return conn


def savepoint(conn: sqlite3.Connection, name: str) -> None:
    """Open a nested transaction `name` inside the writer's (a write's part that may be undone alone)."""
    conn.execute(f"SAVEPOINT {name}")


def release(conn: sqlite3.Connection, name: str) -> None:
    """Keep what was done since savepoint(name)."""
    conn.execute(f"RELEASE {name}")


def rollback_to(conn: sqlite3.Connection, name: str) -> None:
    """Undo what was done since savepoint(name), and close it."""
    conn.execute(f"ROLLBACK TO {name}")
    conn.execute(f"RELEASE {name}")


class Database(GroupCommit):
    """Thread-local readers and one writer path; `start_writer()` turns on group commit across threads."""

    def __init__(self, path: Path, max_batch: int = 256) -> None:
        super().__init__(max_batch)
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._wconn: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []

    def open(self) -> Database:
        """Create the file and schema; refuse a schema newer than this code."""
        private_dir(self.path.parent, tighten=False)  # a folder it makes is 0700
        private_database(self.path)  # 0600 before SQLite opens it: its -wal/-shm files take the same mode
        conn = connect(self.path)
        conn.executescript(SCHEMA)
        upgrade_columns(conn)
        upgrade_indexes(conn)
        check_version(conn, str(self.path))
        self._wconn = conn
        return self

    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
            with self._lock:
                self._readers.append(conn)
        return conn

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.reader().execute(sql, params).fetchall()

    # -- writes ---------------------------------------------------------------------------------------------
    def _commit(self, calls: list[Call]) -> list[tuple[bool, Any]]:
        try:
            with self._lock:
                return self._run_batch(calls)
        except Exception as exc:
            log.error("central DB %s: group commit of %d writes failed: %s", self.path, len(calls), exc)
            return [(False, StoreError(f"central DB {self.path}: commit failed: {exc}"))] * len(calls)

    def _run_batch(self, batch: list) -> list[tuple[bool, Any]]:
        """One transaction; each write in its own savepoint, so a failing write is undone alone."""
        conn = self._wconn
        assert conn is not None, "Database.open() first"
        results: list = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn, args in batch:
                conn.execute("SAVEPOINT w")
                try:
                    results.append((True, fn(conn, *args)))
                    conn.execute("RELEASE w")
                except Exception as exc:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    results.append((False, exc))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    def start_checkpointer(self, interval: float = 1.0, busy_interval: float = 0.05, busy_frames: int = 8192) -> None:
        """Move WAL checkpoints (page copies + fsync) off the writer: the event loop never waits for a disk sync.

        While the WAL holds more than busy_frames frames (readers, such as the monitor's, kept it from starting
        over), checkpoint every busy_interval seconds instead: each complete checkpoint is a chance for the next
        write to start the WAL over, and a WAL growing by tens of MB/s slows every write (issue 15)."""
        if getattr(self, "_ckpt_thread", None) is not None:
            return
        assert self._wconn is not None, "Database.open() first"
        self._wconn.execute("PRAGMA wal_autocheckpoint=0")
        self._ckpt_stop = threading.Event()

        def loop() -> None:
            conn = connect(self.path)
            try:
                wait = interval
                while not self._ckpt_stop.wait(wait):
                    try:
                        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # (busy, frames, copied)
                        wait = busy_interval if row is not None and row[1] > busy_frames else interval
                    except sqlite3.Error as exc:
                        wait = interval
                        log.warning(
                            "central DB %s: checkpoint failed (%s); trying again in %ss", self.path, exc, interval
                        )
            finally:
                conn.close()

        thread = threading.Thread(target=loop, name="central-checkpoint", daemon=True)
        thread.start()
        self._ckpt_thread: threading.Thread | None = thread

    def close(self) -> None:
        self.stop_writer()
        thread = getattr(self, "_ckpt_thread", None)
        if thread is not None:
            self._ckpt_stop.set()
            thread.join(10)
            self._ckpt_thread = None
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._local = threading.local()
            if self._wconn is not None:
                self._wconn.close()
                self._wconn = None
