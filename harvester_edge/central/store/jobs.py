"""jobs: one row per PanDA job (dispatch, pilot reports, state history as a JSON list, end codes)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from .conn import Conn, WriteConn
from .pg import PgConnection, is_pg, split_row


def insert(conn: WriteConn, task_id: int, count: int, status: str, attempt_nr: int, now: float) -> None:
    """count new jobs of the task in this status and attempt."""
    conn.executemany(
        "INSERT INTO jobs (task_id, status, attempt_nr, created, modified) VALUES (?, ?, ?, ?, ?)",
        [(task_id, status, attempt_nr, now, now)] * count,
    )


def claim_activated(
    conn: Conn,
    n_jobs: int,
    site: str,
    harvester_id: str | None,
    worker_id: str | None,
    node: str | None,
    active_task: tuple[str, str],
    now: float,
    task_id: int | None = None,
    fit: tuple[str, tuple] = ("", ()),
    placed: tuple[str | None, int | None] = (None, None),
) -> list[sqlite3.Row]:
    """Up to n_jobs activated jobs of tasks in the (two) active states become sent, in one UPDATE ... RETURNING
    (on PostgreSQL picked FOR UPDATE SKIP LOCKED: concurrent acquires take different jobs without waiting).

    task_id: only that task's jobs (the dispatch order's plan, central/dispatch_order.py);
    fit: (" AND ...", args) on the task (alias t) from brokerage.fit_sql: only jobs that fit the asking queue;
    placed: (computing_element, mem_limit_mb) of that queue, kept on the job (brokerage.job_fits)."""
    where, fit_args = fit
    if task_id is not None:
        where, fit_args = where + " AND j.task_id=?", (*fit_args, task_id)
    if is_pg(conn):
        return conn.execute(
            "WITH picked AS MATERIALIZED (SELECT j.panda_id FROM jobs j JOIN tasks t USING (task_id) "
            "WHERE j.status='activated' AND t.status IN (?, ?)" + where + " ORDER BY j.panda_id LIMIT ? "
            "FOR UPDATE OF j SKIP LOCKED) "
            "UPDATE jobs SET status='sent', site=?, harvester_id=?, worker_id=?, node=?, heartbeat=?, modified=?, "
            "computing_element=?, mem_limit_mb=? "
            "WHERE panda_id = ANY(ARRAY(SELECT panda_id FROM picked)) AND status='activated' RETURNING *",
            (*active_task, *fit_args, n_jobs, site, harvester_id, worker_id, node, now, now, *placed),
        ).fetchall()
    return conn.execute(
        "UPDATE jobs SET status='sent', site=?, harvester_id=?, worker_id=?, node=?, heartbeat=?, modified=?, "
        "computing_element=?, mem_limit_mb=? "
        "WHERE panda_id IN (SELECT j.panda_id FROM jobs j JOIN tasks t USING (task_id) "
        "WHERE j.status='activated' AND t.status IN (?, ?)" + where + " ORDER BY j.panda_id LIMIT ?) RETURNING *",
        (site, harvester_id, worker_id, node, now, now, *placed, *active_task, *fit_args, n_jobs),
    ).fetchall()


def waiting_by_task(conn: Conn, active_task: tuple[str, str], fit: tuple[str, tuple] = ("", ())) -> list[sqlite3.Row]:
    """(task_id, priority, share, first panda_id, activated count) of active tasks with activated jobs (that fit
    the asking queue: brokerage.fit_sql)."""
    where, fit_args = fit
    return conn.execute(
        "SELECT j.task_id, t.priority, t.share, min(j.panda_id), count(*) FROM jobs j JOIN tasks t USING (task_id) "
        "WHERE j.status='activated' AND t.status IN (?, ?)" + where + " GROUP BY j.task_id, t.priority, t.share",
        (*active_task, *fit_args),
    ).fetchall()


def running_by_task(conn: Conn, statuses: tuple[str, ...]) -> dict[int, int]:
    """task_id -> its jobs in these (dispatched, not ended) states."""
    rows = conn.execute(
        f"SELECT task_id, count(*) FROM jobs WHERE status IN ({','.join('?' * len(statuses))}) GROUP BY task_id",
        statuses,
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def cancel(conn: Conn, panda_id: int, now: float) -> None:
    conn.execute("UPDATE jobs SET status='cancelled', modified=? WHERE panda_id=?", (now, panda_id))


def append_state(conn: Conn, panda_id: int, state: str, now: float) -> None:
    """Append [state, time] to the job's state history (a JSON list), unless it repeats the last state."""
    if is_pg(conn):
        conn.execute(
            "UPDATE jobs SET state_history = (coalesce(state_history, '[]')::jsonb || "
            "jsonb_build_array(jsonb_build_array(?::text, ?::float8)))::text WHERE panda_id=? "
            "AND coalesce(coalesce(state_history, '[]')::jsonb -> -1 ->> 0, '') != ?",
            (state, now, panda_id, state),
        )
        return
    conn.execute(
        "UPDATE jobs SET state_history = json_insert(coalesce(state_history, '[]'), '$[#]', "
        "json_array(?, ?)) WHERE panda_id=? AND coalesce(json_extract(state_history, '$[#-1][0]'), '') != ?",
        (state, now, panda_id, state),
    )


def get(conn: Conn, panda_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()


def get_for_update(conn: Conn, panda_id: int) -> sqlite3.Row | None:
    """The job, to change it: on PostgreSQL its row is locked FOR UPDATE NOWAIT (another process changing the
    same job makes this write fail at once with LockNotAvailable; the writer runs it again, bounded). SQLite
    has one writer: a plain read."""
    if is_pg(conn):
        return conn.execute("SELECT * FROM jobs WHERE panda_id=? FOR UPDATE NOWAIT", (panda_id,)).fetchone()
    return get(conn, panda_id)


def get_with_task(conn: Conn, panda_id: int, lock: bool) -> tuple[sqlite3.Row | None, sqlite3.Row | None]:
    """The job (locked as get_for_update does when lock) and its task, or (None, None). On PostgreSQL in one
    statement: each costs the client and the server tens of microseconds of CPU, more than the update's own work."""
    if is_pg(conn):
        row = conn.execute(
            "SELECT j.*, t.* FROM jobs j JOIN tasks t ON t.task_id = j.task_id WHERE j.panda_id=?"
            + (" FOR UPDATE OF j NOWAIT" if lock else ""),
            (panda_id,),
        ).fetchone()
        return (None, None) if row is None else split_row(row, "task_id")
    row = get_for_update(conn, panda_id) if lock else get(conn, panda_id)
    if row is None:
        return None, None
    return row, conn.execute("SELECT * FROM tasks WHERE task_id=?", (row["task_id"],)).fetchone()


def status_of(conn: Conn, panda_id: int) -> sqlite3.Row | None:
    """(status, attempt_nr, command) of the job."""
    return conn.execute("SELECT status, attempt_nr, command FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()


def command_of(conn: Conn, panda_id: int) -> sqlite3.Row | None:
    """(status, command) of the job."""
    return conn.execute("SELECT status, command FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()


def owners(conn: Conn, panda_ids: list[int]) -> Any:
    """(panda_id, harvester_id, worker_id) of these jobs (at most 500 ids per call)."""
    return conn.execute(
        f"SELECT panda_id, harvester_id, worker_id FROM jobs WHERE panda_id IN ({','.join('?' * len(panda_ids))})",
        panda_ids,
    )


def report(
    conn: Conn,
    panda_id: int,
    state: str,
    codes: dict[str, int],
    pilot_diag: str,
    exe_diag: str,
    node: str | None,
    now: float,
) -> None:
    """A pilot's report: state, heartbeat, error codes and diags, events (never fewer), cores, node, end time."""
    conn.execute(
        "UPDATE jobs SET status=?, heartbeat=?, modified=?, pilot_error_code=?, pilot_error_diag=?, "
        "exe_error_code=?, exe_error_diag=?, trans_exit_code=?, n_events="
        + ("greatest" if is_pg(conn) else "max")
        + "(n_events, ?), "
        "core_count=coalesce(nullif(?, 0), core_count), node=coalesce(?, node), "
        "end_time=CASE WHEN ? IN ('finished', 'failed') THEN ? ELSE end_time END WHERE panda_id=?",
        (state, *_reported(codes, pilot_diag, exe_diag, node, now), state, now, panda_id),
    )


def _reported(codes: dict[str, int], pilot_diag: str, exe_diag: str, node: str | None, now: float) -> tuple:
    """The values of a pilot's report, in the order report() and report_same_state() set them."""
    return (
        now,
        now,
        codes["pilotErrorCode"],
        pilot_diag,
        codes["exeErrorCode"],
        exe_diag,
        codes["transExitCode"],
        codes["nEvents"],
        codes["coreCount"],
        node,
    )


def report_same_state(
    conn: Conn,
    panda_id: int,
    state: str,
    codes: dict[str, int],
    pilot_diag: str,
    exe_diag: str,
    node: str | None,
    now: float,
    then: Callable[[Any], Any],
    last: bool,
) -> Any:
    """PostgreSQL: report() for a job already in `state` (a pilot's heartbeat), in one statement that locks the
    job NOWAIT, checks its state and updates it: then((command,)) of the job, or None if the job is not in that
    state (or does not exist; the caller then takes the general path). Each statement costs the service and the
    server a wake-up and tens of microseconds, more than the update itself. `last`: no other statement of the
    write follows it when it updates the job, so the writer may run it as its own transaction or answer it after
    its batch committed (pg.PgConnection.execute_last: the answer may then be a pg.Later). SQLite: None (reads
    are in-process)."""
    if not is_pg(conn):
        return None
    sql = (
        "UPDATE jobs SET heartbeat=?, modified=?, pilot_error_code=?, pilot_error_diag=?, "
        "exe_error_code=?, exe_error_diag=?, trans_exit_code=?, n_events=greatest(n_events, ?), "
        "core_count=coalesce(nullif(?, 0), core_count), node=coalesce(?, node) "
        "WHERE panda_id = (SELECT panda_id FROM jobs WHERE panda_id=? AND status=? FOR UPDATE NOWAIT) "
        "AND status=? RETURNING command"
    )
    params = (*_reported(codes, pilot_diag, exe_diag, node, now), panda_id, state, state)
    if last and isinstance(conn, PgConnection):
        return conn.execute_last(sql, params, then)
    row = conn.execute(sql, params).fetchone()
    return None if row is None else then(row)


def pilot_fields(conn: Conn, panda_id: int, values: tuple) -> None:
    """values (None keeps the old one): start_time, end_time, pilot_id, pilot_timing, cpu_time, cpu_unit,
    max_rss, pilot_log, log_file. Nothing reported: no statement (it would change nothing)."""
    if all(value is None for value in values):
        return
    conn.execute(
        "UPDATE jobs SET start_time=coalesce(?, start_time), end_time=coalesce(?, end_time), "
        "pilot_id=coalesce(?, pilot_id), pilot_timing=coalesce(?, pilot_timing), cpu_time=coalesce(?, cpu_time), "
        "cpu_unit=coalesce(?, cpu_unit), max_rss=coalesce(?, max_rss), pilot_log=coalesce(?, pilot_log), "
        "log_file=coalesce(?, log_file) WHERE panda_id=?",
        (*values, panda_id),
    )


def heartbeat(conn: Conn, panda_id: int, now: float) -> None:
    conn.execute("UPDATE jobs SET heartbeat=? WHERE panda_id=?", (now, panda_id))


def count_in(conn: Conn, task_id: int, statuses: tuple[str, ...]) -> int:
    """The task's jobs in these states."""
    return conn.execute(
        f"SELECT count(*) FROM jobs WHERE task_id=? AND status IN ({','.join('?' * len(statuses))})",
        (task_id, *statuses),
    ).fetchone()[0]


def count_activated(conn: Conn, task_id: int) -> int:
    return conn.execute("SELECT count(*) FROM jobs WHERE task_id=? AND status='activated'", (task_id,)).fetchone()[0]


def last_attempt(conn: Conn, task_id: int) -> int:
    """The task's highest attempt number (0 without jobs)."""
    return conn.execute("SELECT coalesce(max(attempt_nr), 0) FROM jobs WHERE task_id=?", (task_id,)).fetchone()[0]


def cancel_activated(conn: Conn, task_id: int, now: float) -> None:
    """The task's jobs not yet dispatched are cancelled."""
    conn.execute(
        "UPDATE jobs SET status='cancelled', modified=? WHERE task_id=? AND status='activated'", (now, task_id)
    )


def mark_to_kill(conn: Conn, task_id: int, now: float) -> None:
    """The task's jobs that have not ended get the command 'tobekilled'."""
    conn.execute(
        "UPDATE jobs SET command='tobekilled', modified=? WHERE task_id=? AND status NOT IN "
        "('finished', 'failed', 'cancelled')",
        (now, task_id),
    )


def silent(conn: Conn, statuses: Iterable[str], cutoff: float) -> list[sqlite3.Row]:
    """Jobs in these states whose last heartbeat is before cutoff (PostgreSQL: locked to fail them; a job another
    process is changing right now is skipped: it is not silent)."""
    marks = tuple(statuses)
    return conn.execute(
        f"SELECT * FROM jobs WHERE status IN ({','.join('?' * len(marks))}) AND heartbeat < ?"
        + (" ORDER BY panda_id FOR UPDATE SKIP LOCKED" if is_pg(conn) else ""),
        (*marks, cutoff),
    ).fetchall()


def fail_dispatcher(conn: Conn, panda_id: int, code: int, diag: str, now: float) -> None:
    """The job failed for the dispatcher (code, diag), ending now."""
    conn.execute(
        "UPDATE jobs SET status='failed', dispatcher_error_code=?, dispatcher_error_diag=?, "
        "modified=?, end_time=? WHERE panda_id=?",
        (code, diag, now, now, panda_id),
    )


def of_task(conn: Conn, task_id: int) -> list[sqlite3.Row]:
    """The task's jobs, the columns `task show` lists."""
    return conn.execute(
        "SELECT panda_id, status, attempt_nr, command, site, worker_id, heartbeat, n_events, pilot_error_code, "
        "dispatcher_error_code, dispatcher_error_diag, computing_element FROM jobs WHERE task_id=? ORDER BY panda_id",
        (task_id,),
    ).fetchall()


def active_by_site(conn: Conn, terminal: tuple[str, ...]) -> list[sqlite3.Row]:
    """(site, status, count) of the jobs not in the (three) terminal states."""
    return conn.execute(
        "SELECT coalesce(site, ''), status, count(*) FROM jobs WHERE status NOT IN (?, ?, ?) GROUP BY 1, 2", terminal
    ).fetchall()
