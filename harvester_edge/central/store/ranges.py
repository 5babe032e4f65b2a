"""ranges: a task's event ranges (status 0 ready, 1 sent, 2 running, 3 finished, then failed/fatal/cancelled).

The hot path of the service: claims and finishes in one UPDATE ... RETURNING each; the partial index
ranges_unheld (ranges with no holder: every ready range, and cancelled ones that were ready) serves claims, so
claims say `panda_id IS NULL AND status=0`; a job's in-flight ranges are found by scanning the task (NOT INDEXED).
A ready range never has a holder (claim sets it, fail/reopen to ready clear it).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from .conn import Conn, WriteConn
from .pg import is_pg


def insert(conn: WriteConn, rows: Iterable[tuple]) -> None:
    """rows: (task_id, process_id, start_event, last_event, status).

    PostgreSQL: the table's statistics are renewed at once (ANALYZE, allowed in a transaction, no row locks):
    planned on a fresh table's "almost empty" statistics, a claim walks every ready range of the task."""
    conn.executemany(
        "INSERT INTO ranges (task_id, process_id, start_event, last_event, status) VALUES (?, ?, ?, ?, ?)", rows
    )
    if is_pg(conn):
        conn.execute("ANALYZE ranges")


def open_events(conn: Conn, task_id: int, open_states: tuple[int, ...]) -> int:
    """The number of events in the task's ranges of these (three) states."""
    row = conn.execute(
        "SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges WHERE task_id=? AND status IN (?, ?, ?)",
        (task_id, *open_states),
    ).fetchone()
    return int(row[0])


def events_in(conn: Conn, task_id: int, status: int) -> int:
    """The number of events in the task's ranges of one state."""
    return conn.execute(
        "SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges WHERE task_id=? AND status=?",
        (task_id, status),
    ).fetchone()[0]


# -- PostgreSQL: where a task's ready ranges start ------------------------------------------------------------------
# PostgreSQL keeps a claimed range's entry in ranges_unheld until VACUUM (marked dead once seen), so a claim or an
# any_ready that starts at the task's first range walks the entries of every range claimed before it: a cost per
# claim that grows with the task (server CPU per range claimed and finished 11 -> 13.5 us over a 200,000-range
# task; 8.3-10 us, flat, starting from the floor). So the writer's connection keeps per task a floor: no range below
# it was ready when this connection last looked. Its own claims raise it, its own fails and reopens lower it; what
# other processes make ready below it is found when a claim above it comes up short, or within FLOOR_TTL, when the
# floor is forgotten and the next claim starts at the task's first range again. A range is never lost, only handed
# out up to FLOOR_TTL later than its number says. SQLite removes index entries at once: it has no floors.
FLOOR_TTL = 1.0
FLOORS_KEPT = 256  # past this many tasks, the expired floors are dropped when one is set


def _floors(conn: Conn) -> dict[int, tuple[int, float]] | None:
    """task_id -> (floor, when it is forgotten) of a PostgreSQL writer's connection; None elsewhere."""
    return getattr(conn, "floors", None)


def _floor(conn: Conn, task_id: int) -> int:
    floors = _floors(conn)
    got = floors.get(task_id) if floors is not None else None
    if got is None:
        return 0
    if got[1] <= time.monotonic():
        del floors[task_id]  # type: ignore[union-attr]
        return 0
    return got[0]


def _raise_floor(conn: Conn, task_id: int, floor: int, was: int) -> None:
    """Everything from `was` (the floor looked from) up to `floor` is not ready (any more)."""
    floors = _floors(conn)
    if floors is not None:
        now = time.monotonic()
        if len(floors) >= FLOORS_KEPT:  # tasks that ended or went quiet: their floors are forgotten anyway
            for gone in [t for t, (_, expires) in floors.items() if expires <= now]:
                del floors[gone]
        expires = floors[task_id][1] if was and task_id in floors else now + FLOOR_TTL
        floors[task_id] = (floor, expires)


def lower_floor(conn: Conn, task_id: int, process_id: int | None = None) -> None:
    """A range of the task (None: any) may be ready again: the floor goes below it."""
    floors = _floors(conn)
    if floors is None or task_id not in floors:
        return
    if process_id is None or process_id < 1:
        del floors[task_id]
    elif process_id < floors[task_id][0]:
        floors[task_id] = (process_id, floors[task_id][1])


def claim(
    conn: Conn, task_id: int, panda_id: int, n_ranges: int, now: float, upto: int | None = None
) -> list[sqlite3.Row]:
    """Up to n_ranges ready ranges of the task sent to the job: (process_id, start_event, last_event, attempt_nr);
    upto: only ranges with process_id <= upto (a scouting task's scouts, central/scouts.py).

    On PostgreSQL the ready ranges are picked FOR UPDATE SKIP LOCKED: processes claiming at the same time take
    different ranges and never wait for each other; the pick starts at the connection's floor (above), and
    below it only when that gives too few."""
    only, only_args = ("", ()) if upto is None else (" AND process_id <= ?", (upto,))
    if is_pg(conn):
        floor = _floor(conn, task_id)
        rows = _claim_pg(conn, task_id, panda_id, n_ranges, now, only, only_args, floor, None)
        if len(rows) == n_ranges:
            _raise_floor(conn, task_id, max(row[0] for row in rows) + 1, floor)
            return rows
        if floor > 0:  # the task's tail, or ranges made ready below the floor by another process
            rows += _claim_pg(conn, task_id, panda_id, n_ranges - len(rows), now, only, only_args, 0, floor)
        lower_floor(conn, task_id)  # look from the task's first range next time
        return rows
    return conn.execute(
        "UPDATE ranges SET status=1, panda_id=?, attempt_nr=attempt_nr+1, modified=? "
        "WHERE task_id=? AND status=0 AND process_id IN (SELECT process_id FROM ranges INDEXED BY ranges_unheld "
        "WHERE task_id=? AND panda_id IS NULL AND status=0" + only + " ORDER BY process_id LIMIT ?) "
        "RETURNING process_id, start_event, last_event, attempt_nr",
        (panda_id, now, task_id, task_id, *only_args, n_ranges),
    ).fetchall()


def _claim_pg(
    conn: Conn,
    task_id: int,
    panda_id: int,
    n_ranges: int,
    now: float,
    only: str,
    only_args: tuple,
    low: int,
    below: int | None,
) -> list[sqlite3.Row]:
    """The claim on PostgreSQL among process_ids >= low (and < below). A CTE runs once (a subquery under IN may
    run again per row and pick more): at most n_ranges rows; = ANY(ARRAY(...)) makes the update primary-key probes
    (a join planned on stale statistics was a nested loop over every ready range)."""
    bound, bound_args = ("", ()) if below is None else (" AND process_id < ?", (below,))
    return conn.execute(
        "WITH picked AS MATERIALIZED (SELECT process_id FROM ranges WHERE task_id=? AND panda_id IS NULL "
        "AND status=0 AND process_id >= ?" + bound + only + " "
        "ORDER BY process_id LIMIT ? FOR UPDATE SKIP LOCKED) "
        "UPDATE ranges r SET status=1, panda_id=?, attempt_nr=r.attempt_nr+1, modified=? "
        "WHERE r.task_id=? AND r.process_id = ANY(ARRAY(SELECT process_id FROM picked)) AND r.status=0 "
        "RETURNING r.process_id, r.start_event, r.last_event, r.attempt_nr",
        (task_id, low, *bound_args, *only_args, n_ranges, panda_id, now, task_id),
    ).fetchall()


def start_sent(conn: Conn, task_id: int, panda_id: int, now: float) -> list[sqlite3.Row]:
    """The job's sent ranges become running: (process_id, start_event, last_event, attempt_nr)."""
    return conn.execute(
        "UPDATE ranges SET status=2, modified=? WHERE task_id=? AND panda_id=? AND status=1 "
        "RETURNING process_id, start_event, last_event, attempt_nr",
        (now, task_id, panda_id),
    ).fetchall()


def fail(
    conn: Conn,
    key: tuple,
    max_attempts: int,
    counted: bool,
    fatal: bool,
    final: int,
    ready: int,
    code: int | None,
    diag: str | None,
    now: float,
) -> None:
    """One range failed: `final` if fatal or its counted failures reach max_attempts, else `ready` (no holder)."""
    lower_floor(conn, *key)
    conn.execute(
        "UPDATE ranges SET failures = failures + ?, error_code=?, error_diag=?, modified=?, "
        "status = CASE WHEN ? OR failures + ? >= ? THEN ? ELSE ? END, "
        "panda_id = CASE WHEN ? OR failures + ? >= ? THEN panda_id ELSE NULL END "
        "WHERE task_id=? AND process_id=?",
        (
            int(counted),
            code,
            diag,
            now,
            fatal,
            int(counted),
            max_attempts,
            final,
            ready,
            fatal,
            int(counted),
            max_attempts,
            *key,
        ),
    )


def finish_held(conn: Conn, task_id: int, expected: dict[int, tuple[int, int]], now: float) -> list[int]:
    """Finish those of these in-flight ranges of one task that are held by the expected (attempt_nr, panda_id)
    (expected: process_id -> that pair), in one statement; returns the process_ids finished.

    SQLite: all or none: one UPDATE ... RETURNING inside a savepoint, rolled back on any surprise. PostgreSQL:
    each range held as expected, no savepoint (each statement costs the service and the server a wake-up and
    tens of microseconds). The expectations are arrays looked up per row (array_position; at most 500), not a
    join with unnest(...): the prepared statement's generic plan ran the unnest again for every row."""
    if is_pg(conn):
        # array literals as text ('{1,2,3}', cast by the statement): psycopg dumps a list element by element in
        # Python, a string at once (a tenth of the service's CPU per range otherwise)
        pids = "{" + ",".join(map(str, expected)) + "}"
        attempts = "{" + ",".join(str(attempt) for attempt, _ in expected.values()) + "}"
        panda_ids = "{" + ",".join(str(panda_id) for _, panda_id in expected.values()) + "}"
        rows = conn.execute(
            "UPDATE ranges SET status=3, modified=? WHERE task_id=? AND process_id = ANY(?::bigint[]) "
            "AND status IN (1, 2) AND attempt_nr = (?::bigint[])[array_position(?::bigint[], process_id)] "
            "AND panda_id = (?::bigint[])[array_position(?::bigint[], process_id)] RETURNING process_id",
            (now, task_id, pids, attempts, pids, panda_ids, pids),
        ).fetchall()
        return [row[0] for row in rows]
    conn.execute("SAVEPOINT finish_all")
    got = conn.execute(
        f"UPDATE ranges SET status=3, modified=? WHERE task_id=? AND status IN (1, 2) AND "
        f"process_id IN ({','.join('?' * len(expected))}) "
        f"RETURNING process_id, attempt_nr, panda_id",
        (now, task_id, *expected),
    ).fetchall()
    if len(got) == len(expected) and all(expected[pid] == (att, holder) for pid, att, holder in got):
        conn.execute("RELEASE finish_all")
        return list(expected)
    conn.execute("ROLLBACK TO finish_all")
    conn.execute("RELEASE finish_all")
    return []


def finish(conn: Conn, task_id: int, process_ids: list[int], now: float) -> None:
    """These ranges of the task are finished (at most 500 ids per call)."""
    conn.execute(
        f"UPDATE ranges SET status=3, modified=? WHERE task_id=? "
        f"AND process_id IN ({','.join('?' * len(process_ids))})",
        (now, task_id, *process_ids),
    )


def holders(conn: Conn, task_id: int, process_ids: list[int]) -> Any:
    """(process_id, status, attempt_nr, panda_id) of these ranges of the task (at most 500 ids per call), to
    change them: on PostgreSQL locked FOR UPDATE (in process_id order), so what is read stays true until commit."""
    return conn.execute(
        f"SELECT process_id, status, attempt_nr, panda_id FROM ranges WHERE "
        f"task_id=? AND process_id IN ({','.join('?' * len(process_ids))})"
        + (" ORDER BY process_id FOR UPDATE" if is_pg(conn) else ""),
        (task_id, *process_ids),
    )


def holder(conn: Conn, key: tuple[int, int]) -> sqlite3.Row:
    """(status, attempt_nr, panda_id) of the range (task_id, process_id)."""
    return conn.execute(
        "SELECT status, attempt_nr, panda_id FROM ranges WHERE task_id=? AND process_id=?", key
    ).fetchone()


def in_flight_of_job(conn: Conn, task_id: int, panda_id: int) -> list[sqlite3.Row]:
    """(task_id, process_id) of the job's sent or running ranges (PostgreSQL: locked FOR UPDATE, to release)."""
    return conn.execute(
        "SELECT task_id, process_id FROM ranges NOT INDEXED WHERE task_id=? AND panda_id=? AND status IN (1, 2)"
        + (" ORDER BY process_id FOR UPDATE" if is_pg(conn) else ""),
        (task_id, panda_id),
    ).fetchall()


def finish_job_units(conn: Conn, task_id: int, panda_id: int, finished: int, now: float) -> None:
    """An ordinary job finished: its sent/running unit of work becomes `finished`."""
    conn.execute(
        "UPDATE ranges SET status=?, modified=? WHERE task_id=? AND panda_id=? AND status IN (1, 2)",
        (finished, now, task_id, panda_id),
    )


def job_has(conn: Conn, task_id: int, panda_id: int, status: int) -> bool:
    """Whether the job holds a range of the task in this state."""
    return (
        conn.execute(
            "SELECT 1 FROM ranges NOT INDEXED WHERE task_id=? AND panda_id=? AND status=? LIMIT 1",
            (task_id, panda_id, status),
        ).fetchone()
        is not None
    )


def job_in_flight(conn: Conn, task_id: int, panda_id: int) -> bool:
    """Whether the job holds a sent or running range of the task."""
    return (
        conn.execute(
            "SELECT 1 FROM ranges NOT INDEXED WHERE task_id=? AND panda_id=? AND status IN (1, 2) LIMIT 1",
            (task_id, panda_id),
        ).fetchone()
        is not None
    )


def any_ready(conn: Conn, task_id: int) -> bool:
    """Whether the task has a ready range (an index probe). ORDER BY: PostgreSQL, planning on the statistics of
    a fresh task (all ranges ready), otherwise scans the table from its start, past every range already claimed.
    A PostgreSQL writer looks from its floor first (see claim)."""
    sql = (
        "SELECT process_id FROM ranges INDEXED BY ranges_unheld WHERE task_id=? AND panda_id IS NULL AND status=0 "
        "AND process_id >= ? ORDER BY process_id LIMIT 1"
    )
    floor = _floor(conn, task_id)
    row = conn.execute(sql, (task_id, floor)).fetchone()
    if row is None and floor > 0:
        row = conn.execute(sql, (task_id, 0)).fetchone()
        floor = 0
    if row is not None and row[0] > floor:
        _raise_floor(conn, task_id, row[0], floor)
    return row is not None


def any_in_flight(conn: Conn, task_id: int) -> bool:
    """Whether the task has a sent or running range."""
    return (
        conn.execute(
            "SELECT 1 FROM ranges NOT INDEXED WHERE task_id=? AND status IN (1, 2) LIMIT 1", (task_id,)
        ).fetchone()
        is not None
    )


def count_by_status(conn: Conn, task_id: int) -> dict[int, int]:
    """status -> number of the task's ranges."""
    return dict(
        conn.execute("SELECT status, count(*) FROM ranges WHERE task_id=? GROUP BY status", (task_id,)).fetchall()
    )


def count_ready(conn: Conn, task_id: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM ranges WHERE task_id=? AND panda_id IS NULL AND status=0", (task_id,)
    ).fetchone()[0]


def count_ready_of_active_tasks(conn: Conn, ready: int, task_id: int | None = None) -> int:
    """Ready ranges of defined or running tasks (of one task if given)."""
    sql, args = (
        "SELECT count(*) FROM ranges r JOIN tasks t USING (task_id) WHERE r.panda_id IS NULL AND r.status=? "
        "AND t.status IN ('defined', 'running')",
        [ready],
    )
    if task_id is not None:
        sql, args = sql + " AND r.task_id=?", [*args, task_id]
    return conn.execute(sql, args).fetchone()[0]


def cancel_open(conn: Conn, task_id: int, cancelled: int, open_states: tuple[int, ...], now: float) -> None:
    """The task's ranges in the (three) open states become cancelled."""
    conn.execute(
        "UPDATE ranges SET status=?, modified=? WHERE task_id=? AND status IN (?, ?, ?)",
        (cancelled, now, task_id, *open_states),
    )


def reopen(conn: Conn, task_id: int, ready: int, ended: tuple[int, int, int], now: float) -> None:
    """The task's ranges in the (three) ended states become ready, with no failures and no holder."""
    lower_floor(conn, task_id)
    conn.execute(
        "UPDATE ranges SET status=?, failures=0, panda_id=NULL, modified=? WHERE task_id=? AND status IN (?, ?, ?)",
        (ready, now, task_id, *ended),
    )


def event_totals(conn: Conn, task_id: int, finished: int, failed: tuple[int, int]) -> tuple:
    """(events finished, events failed for good, events retried, ranges retried) of a task."""
    return conn.execute(
        "SELECT coalesce(sum(CASE WHEN status = ? THEN last_event - start_event + 1 END), 0), "
        "coalesce(sum(CASE WHEN status IN (?, ?) THEN last_event - start_event + 1 END), 0), "
        "coalesce(sum(CASE WHEN attempt_nr > 1 THEN last_event - start_event + 1 END), 0), "
        "coalesce(sum(attempt_nr > 1), 0) FROM ranges WHERE task_id = ?",
        (finished, *failed, task_id),
    ).fetchone()


def failures_of_job(conn: Conn, task_id: int, panda_id: int) -> list[sqlite3.Row]:
    """(error_code, error_diag) of the job's ranges that failed with a code, else of any of the task's (a range
    retried after a failure no longer names its job); at most 1000."""
    sql = "SELECT error_code, error_diag FROM ranges WHERE task_id=? AND error_code IS NOT NULL AND error_code != 0"
    rows = conn.execute(sql + " AND panda_id=? LIMIT 1000", (task_id, panda_id)).fetchall()
    return rows or conn.execute(sql + " LIMIT 1000", (task_id,)).fetchall()


def any_open_upto(conn: Conn, task_id: int, upto: int) -> bool:
    """Whether a range of the task with process_id <= upto is ready, sent or running (a scout still open)."""
    return (
        conn.execute(
            "SELECT 1 FROM ranges WHERE task_id=? AND process_id <= ? AND status IN (0, 1, 2) LIMIT 1",
            (task_id, upto),
        ).fetchone()
        is not None
    )


def sizes(conn: Conn, task_id: int, process_ids: list[int]) -> dict[int, int]:
    """process_id -> number of events, of these ranges of the task (at most 500 ids per call)."""
    return dict(
        conn.execute(
            f"SELECT process_id, last_event - start_event + 1 FROM ranges WHERE task_id=? "
            f"AND process_id IN ({','.join('?' * len(process_ids))})",
            (task_id, *process_ids),
        ).fetchall()
    )
