"""Read-only views of the central DB for the web monitor (web/data.py, web/history.py, web/pages.py) and the
Prometheus metrics (metrics.py): counts and groups across tables, never a write."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..states import JobStatus
from .conn import Conn
from .pg import is_pg


def _floor(conn: Conn, expr: str) -> str:
    """expr (non-negative) rounded down to an integer: SQLite's CAST truncates, PostgreSQL's rounds."""
    return f"CAST(floor({expr}) AS BIGINT)" if is_pg(conn) else f"CAST({expr} AS INTEGER)"


def _concat(conn: Conn, column: str) -> str:
    """The distinct values of column joined by commas."""
    return f"string_agg(DISTINCT CAST({column} AS TEXT), ',')" if is_pg(conn) else f"group_concat(DISTINCT {column})"


# -- dashboard and sites --------------------------------------------------------------------------------------
def events_per_minute(conn: Conn, finished: int, since: float) -> dict[int, int]:
    """minute (epoch // 60) -> events in ranges finished in it, since `since`."""
    return dict(
        conn.execute(
            f"SELECT {_floor(conn, 'modified / 60')} AS m, sum(last_event - start_event + 1) FROM ranges "
            "WHERE status=? AND modified >= ? GROUP BY m",
            (finished, since),
        ).fetchall()
    )


def workers_by_site(conn: Conn) -> list[dict]:
    """{queue (the site), state, count} of the workers harvesters reported."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT coalesce(site, '?') AS queue, coalesce(status, pilot_status, '?') AS state, count(*) AS count "
            "FROM workers GROUP BY 1, 2 ORDER BY 1, 2"
        )
    ]


def harvesters(conn: Conn) -> list[dict]:
    return [
        dict(r)
        for r in conn.execute("SELECT harvester_id, last_heartbeat, attrs FROM harvesters ORDER BY harvester_id")
    ]


def jobs_by_site(conn: Conn) -> list[sqlite3.Row]:
    """(site ('' when not dispatched), status, n)."""
    return conn.execute("SELECT coalesce(site, '') AS site, status, count(*) AS n FROM jobs GROUP BY 1, 2").fetchall()


# -- errors ---------------------------------------------------------------------------------------------------
def range_errors(conn: Conn, task_id: int) -> list[dict]:
    """The task's range failures grouped by (code, message): source 'event', code, message, count."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT 'event' AS source, error_code AS code, coalesce(error_diag, '') AS message, count(*) AS count "
            "FROM ranges WHERE task_id=? AND error_code IS NOT NULL AND error_code != 0 GROUP BY 2, 3",
            (task_id,),
        )
    ]


def all_range_errors(conn: Conn) -> list[dict]:
    """Every range failure grouped by (code, message), with the tasks it happened in."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT 'event' AS source, error_code AS code, coalesce(error_diag, '') AS message, count(*) AS count, "
            f"{_concat(conn, 'task_id')} AS tasks FROM ranges WHERE error_code IS NOT NULL AND error_code != 0 "
            "GROUP BY 2, 3"
        )
    ]


def job_errors(conn: Conn, task_id: int | None = None) -> list[dict]:
    """Job failures (of one task, or all) grouped by (source, code, message) for pilot, exe and dispatcher codes."""
    where, args = ("WHERE task_id=?", (task_id,)) if task_id is not None else ("", ())
    out = []
    for source, code, diag in (
        ("pilot", "pilot_error_code", "pilot_error_diag"),
        ("exe", "exe_error_code", "exe_error_diag"),
        ("jobDispatcher", "dispatcher_error_code", "dispatcher_error_diag"),
    ):
        extra = "AND" if where else "WHERE"
        out += [
            dict(r)
            for r in conn.execute(
                f"SELECT CAST(? AS TEXT) AS source, {code} AS code, {diag} AS message, count(*) AS count "
                f"FROM jobs {where} {extra} {code} != 0 GROUP BY 2, 3",
                (source, *args),
            )
        ]
    return out


# -- task and job ---------------------------------------------------------------------------------------------
def events_by_status(conn: Conn, task_id: int) -> list[sqlite3.Row]:
    """(status, events) of the task's ranges."""
    return conn.execute(
        "SELECT status, sum(last_event - start_event + 1) FROM ranges WHERE task_id=? GROUP BY status", (task_id,)
    ).fetchall()


def finished_span(conn: Conn, task_id: int, finished: int) -> sqlite3.Row:
    """(first, last) time a range of the task was finished (None, None without one)."""
    return conn.execute(
        "SELECT min(modified), max(modified) FROM ranges WHERE task_id=? AND status=?", (task_id, finished)
    ).fetchone()


def finished_buckets(conn: Conn, task_id: int, finished: int, t0: float, width: float) -> Any:
    """(bucket, events) of the task's finished ranges by (modified - t0) // width, in bucket order."""
    return conn.execute(
        f"SELECT {_floor(conn, '(modified - ?) / ?')} AS b, sum(last_event - start_event + 1) FROM ranges "
        "WHERE task_id=? AND status=? GROUP BY b ORDER BY b",
        (t0, width, task_id, finished),
    )


def job(conn: Conn, panda_id: int) -> dict | None:
    row = conn.execute("SELECT * FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
    return dict(row) if row else None


def job_ranges(conn: Conn, task_id: int, panda_id: int) -> list[sqlite3.Row]:
    """The ranges of the task last handed to the job, by process id."""
    return conn.execute(
        "SELECT process_id, start_event, last_event, status, attempt_nr, failures, error_code, "
        "error_diag, modified FROM ranges WHERE task_id=? AND panda_id=? ORDER BY process_id",
        (task_id, panda_id),
    ).fetchall()


# -- metrics --------------------------------------------------------------------------------------------------
def tasks_by_status(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()


def jobs_by_status(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()


def ranges_by_status(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT status, count(*) FROM ranges GROUP BY status").fetchall()


def events_finished_by_task(conn: Conn) -> list[tuple[Any, ...]]:
    """(task_id, events in finished ranges)."""
    return conn.execute(
        "SELECT task_id, sum(last_event - start_event + 1) FROM ranges WHERE status=3 GROUP BY task_id"
    ).fetchall()


def key_expiry_by_client(conn: Conn) -> list[tuple[Any, ...]]:
    """(client_name, latest expiry of its unrevoked keys)."""
    return conn.execute(
        "SELECT client_name, max(expires) FROM token_keys WHERE revoked=0 GROUP BY client_name"
    ).fetchall()


def task_active_time(conn: Conn, now: float) -> sqlite3.Row:
    """(average seconds tasks are active: created -> last change when done, -> now otherwise; number of tasks)."""
    return conn.execute(
        "SELECT avg(CASE WHEN status IN ('finished', 'failed', 'aborted') THEN modified - created "
        "ELSE ? - created END), count(*) FROM tasks",
        (now,),
    ).fetchone()


def failed_tasks(conn: Conn) -> list[tuple[Any, ...]]:
    """(task_id, name, diag, modified) of the tasks in state failed (the task_failed alert)."""
    return conn.execute(
        "SELECT task_id, name, diag, modified FROM tasks WHERE status = 'failed' ORDER BY task_id"
    ).fetchall()


# -- the failed tasks one harvester worked on (v1 harvester/get_failed_tasks, a remote site's task_failed alert) --
# Every job state, so that EXISTS below looks a task's jobs up through the index jobs_status(status, task_id)
# (one probe per state) instead of scanning the jobs table: there is no index on jobs(task_id) alone.
_JOB_STATES = tuple(s.value for s in JobStatus)


def failed_tasks_of(conn: Conn, harvester_id: str, since: float, limit: int) -> list[tuple[Any, ...]]:
    """(task_id, name, diag, modified) of the tasks in state failed since `since` (their last change) with at
    least one job dispatched to harvester_id, newest first, at most `limit` rows."""
    states = ",".join("?" * len(_JOB_STATES))
    return conn.execute(
        "SELECT t.task_id, t.name, t.diag, t.modified FROM tasks t WHERE t.status = 'failed' AND t.modified >= ? "
        f"AND EXISTS (SELECT 1 FROM jobs j WHERE j.status IN ({states}) AND j.task_id = t.task_id "
        "AND j.harvester_id = ?) ORDER BY t.modified DESC, t.task_id DESC LIMIT ?",
        (since, *_JOB_STATES, harvester_id, limit),
    ).fetchall()
