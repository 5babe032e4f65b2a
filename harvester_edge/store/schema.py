"""The bookkeeping schema as an ordered list of migrations; one row per applied migration in `migrations`.

Add a migration by appending to MIGRATIONS; never edit one that has shipped. A database whose newest migration is
unknown to this code was written by a newer harvester-edge and is refused (see db.open_store).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable

LEASED = """
    lease_owner TEXT,
    lease_expires REAL,
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # not executescript(): it COMMITs first, and migrations must run inside the caller's transaction
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _initial(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        f"""
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        batch TEXT NOT NULL,
        draining INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE jobs (
        panda_id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL,
        jobset_id INTEGER,
        queue TEXT NOT NULL REFERENCES queues(name),
        state TEXT NOT NULL,
        spec TEXT NOT NULL,              -- the job description as the central service sent it (JSON)
        events_total INTEGER,
        events_done INTEGER NOT NULL DEFAULT 0,
        seconds_per_event REAL,          -- measured from finished ranges once there are any
        no_more_ranges INTEGER NOT NULL DEFAULT 0,
        error_code INTEGER, error_diag TEXT,
        {LEASED}
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_state ON jobs(state, queue);
    CREATE TABLE workers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL REFERENCES queues(name),
        state TEXT NOT NULL,
        job_name TEXT NOT NULL UNIQUE,   -- unique batch job name: find_by_name after a crash
        batch_id TEXT,
        access_point TEXT NOT NULL,
        nodes INTEGER NOT NULL,
        ranks_per_node INTEGER NOT NULL,
        walltime INTEGER NOT NULL,
        batch_state TEXT, batch_reason TEXT, exit_code INTEGER,
        submit_attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at REAL,
        kill_requested INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        submitted_at REAL, started_at REAL, ended_at REAL, heartbeat_at REAL, cleaned_at REAL,
        {LEASED}
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX workers_state ON workers(state, queue);
    CREATE TABLE job_workers (
        panda_id INTEGER NOT NULL REFERENCES jobs(panda_id),
        worker_id INTEGER NOT NULL REFERENCES workers(id),
        PRIMARY KEY (panda_id, worker_id)
    ) WITHOUT ROWID;
    CREATE INDEX job_workers_worker ON job_workers(worker_id);
    CREATE TABLE event_ranges (
        range_id TEXT PRIMARY KEY,       -- the central service's eventRangeID (attempt-scoped)
        panda_id INTEGER NOT NULL REFERENCES jobs(panda_id),
        worker_id INTEGER REFERENCES workers(id),
        state TEXT NOT NULL,
        first_event INTEGER NOT NULL,
        last_event INTEGER NOT NULL,
        spec TEXT NOT NULL,              -- the range as the central service sent it (JSON)
        result TEXT,                     -- the pilot's report (JSON): path, size, adler32, timing, error
        {LEASED}
        updated_at REAL NOT NULL
    );
    CREATE INDEX event_ranges_state ON event_ranges(state, panda_id);
    CREATE INDEX event_ranges_worker ON event_ranges(worker_id, state);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,   -- drained in id order
        kind TEXT NOT NULL,              -- update_event_ranges | update_jobs | update_workers
        state TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX outbox_state ON outbox(state, id);
    CREATE TABLE state_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        at REAL NOT NULL,
        reason TEXT
    );
    CREATE INDEX state_history_object ON state_history(kind, object_id);
    """,
    )


def _install_id_and_request_seq(conn: sqlite3.Connection) -> None:
    # install_id goes into every batch job name, so a wiped DB never mistakes an old job for one of its own;
    # request_seq lets the feeder answer a pilot's request again, identically, after a crash
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('install_id', ?)", (secrets.token_hex(3),))
    conn.execute("ALTER TABLE event_ranges ADD COLUMN request_seq INTEGER")
    conn.execute("CREATE INDEX event_ranges_request ON event_ranges(worker_id, request_seq)")


def _uncleaned_workers_index(conn: sqlite3.Connection) -> None:
    # the sweeper looks for ended workers whose access point is still there: the few, not all that ever ended
    conn.execute("CREATE INDEX workers_uncleaned ON workers(state) WHERE cleaned_at IS NULL")


def _recent_failures_index(conn: sqlite3.Connection) -> None:
    # the submitter counts a queue's workers that failed lately, every cycle: failed workers pile up with the
    # history, so it reads the newest of them by time instead of all (the index holds failed rows only)
    conn.execute("CREATE INDEX workers_failed ON workers(queue, updated_at) WHERE state = 'failed'")


def _alerts(conn: sqlite3.Connection) -> None:
    # the alerts agent's memory: one row per alert (rule + key) with its state, so a restart neither re-sends a
    # firing alert nor forgets to resolve it; and the messages to the webhooks, kept until delivered (an outbox)
    _run_script(
        conn,
        """
    CREATE TABLE alerts (
        rule TEXT NOT NULL,
        key TEXT NOT NULL,               -- what it is about: '' (the site), a queue, an agent, a task, a credential
        state TEXT NOT NULL,             -- firing | resolved
        severity TEXT NOT NULL,
        labels TEXT NOT NULL,            -- JSON object
        value REAL,
        threshold REAL,
        summary TEXT NOT NULL,
        since REAL NOT NULL,             -- when it started firing (resolved: when it fired last)
        resolved_at REAL,
        evaluated_at REAL NOT NULL,
        PRIMARY KEY (rule, key)
    ) WITHOUT ROWID;
    CREATE TABLE alert_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,   -- delivered in id order per webhook
        webhook TEXT NOT NULL,
        rule TEXT NOT NULL,
        key TEXT NOT NULL,
        state TEXT NOT NULL,             -- firing | resolved: what the message says
        status TEXT NOT NULL,            -- pending | sent | dropped
        body TEXT NOT NULL,              -- the generic JSON message (the Slack text is made from it)
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at REAL,
        last_error TEXT,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX alert_messages_pending ON alert_messages(webhook, id) WHERE status = 'pending';
    CREATE INDEX alert_messages_sent ON alert_messages(webhook, sent_at) WHERE status = 'sent'
    """,
    )


def _persistent_pilots(conn: sqlite3.Connection) -> None:
    # a persistent pilot's next job (agents/persistent.py): the job request it answers (a crash re-sends the same
    # job), and when the worker moved on from an earlier job (the job then settles though its worker still runs)
    conn.execute("ALTER TABLE job_workers ADD COLUMN request_seq INTEGER")
    conn.execute("ALTER TABLE job_workers ADD COLUMN left_at REAL")


def _queue_pledges(conn: sqlite3.Connection) -> None:
    # what the monitor needs of a queue's config to show cores against the pledge (harvester_edge.pledges)
    conn.execute(
        "CREATE TABLE queue_pledges (name TEXT PRIMARY KEY REFERENCES queues(name), "
        "cores_per_node INTEGER NOT NULL, pledged_cores INTEGER, opportunistic INTEGER NOT NULL DEFAULT 0)"
    )


def _payload_log_offsets(conn: sqlite3.Connection) -> None:
    # payload logs shipped to the central service (harvester_edge.agents.paylogs): per worker and file, how far it
    # was read and sent; a worker whose files were all sent after it ended is done
    _run_script(
        conn,
        """
    CREATE TABLE payload_log_offsets (
        worker_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        shipped_to INTEGER NOT NULL,
        error TEXT,                      -- why the file is not read (unsafe, replaced): kept for the operator
        updated_at REAL NOT NULL,
        PRIMARY KEY (worker_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE payload_log_done (worker_id INTEGER PRIMARY KEY, done_at REAL NOT NULL)
    """,
    )


def _alert_clear_since(conn: sqlite3.Connection) -> None:
    # flap damping: when a firing alert's condition cleared, so it resolves only after the rule's resolve_after
    conn.execute("ALTER TABLE alerts ADD COLUMN clear_since REAL")


def _workers_ended_index(conn: sqlite3.Connection) -> None:
    # the worker_failures alert counts the workers that ended within its window every alerts cycle: without this
    # it read every ended worker the history keeps (21.7 s of 278 s of agent CPU at 100,000 simulated workers)
    conn.execute("CREATE INDEX workers_ended_time ON workers(coalesce(ended_at, updated_at))")


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_initial", _initial),
    ("0002_install_id_and_request_seq", _install_id_and_request_seq),
    ("0003_uncleaned_workers_index", _uncleaned_workers_index),
    ("0004_recent_failures_index", _recent_failures_index),
    ("0007_alerts", _alerts),
    ("0008_queue_pledges", _queue_pledges),
    ("0009_persistent_pilots", _persistent_pilots),
    ("0010_payload_log_offsets", _payload_log_offsets),
    ("0011_alert_clear_since", _alert_clear_since),
    ("0012_workers_ended_index", _workers_ended_index),
]

SCHEMA_VERSION = len(MIGRATIONS)
