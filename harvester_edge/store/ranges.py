"""The event_ranges table: the ranges the harvester holds for its pilots (see states.RangeState for their life).

A range is inserted FETCHED (INSERT OR IGNORE: the service's range id is attempt-scoped), handed to a worker with the
request sequence it answers (so the same request is answered identically after a crash), and ends with the pilot's
report (result) or RELEASED when its worker ended without reporting it. State changes go through rows.transition.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from harvester_edge.states import WORKER_ENDED, RangeState

R = RangeState


def insert_fetched(conn: sqlite3.Connection, panda_id: int, ranges: list[dict[str, Any]], now: float) -> None:
    """Ranges of the job as the central service sent them (spec kept as JSON); a range already known is kept."""
    conn.executemany(
        "INSERT OR IGNORE INTO event_ranges (range_id, panda_id, state, first_event, last_event, spec,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r["eventRangeID"],
                panda_id,
                R.FETCHED.value,
                int(r["startEvent"]),
                int(r["lastEvent"]),
                json.dumps(r),
                now,
            )
            for r in ranges
        ],
    )


def stock_specs(conn: sqlite3.Connection, panda_id: int) -> list[str]:
    """The JSON specs of the job's ranges in stock (fetched, not handed to a worker), first event first."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT spec FROM event_ranges WHERE panda_id = ? AND state = ? AND worker_id IS NULL ORDER BY first_event",
            (panda_id, R.FETCHED.value),
        )
    ]


def stock_rows(conn: sqlite3.Connection, panda_id: int, limit: int) -> list[sqlite3.Row]:
    """(range_id, spec) of the first `limit` ranges of the job in stock, first event first (as stock_specs); a
    negative limit: all of them."""
    return conn.execute(
        "SELECT range_id, spec FROM event_ranges WHERE panda_id = ? AND state = ? AND worker_id IS NULL "
        "ORDER BY first_event LIMIT ?",
        (panda_id, R.FETCHED.value, limit),
    ).fetchall()


def stock_size(conn: sqlite3.Connection, panda_id: int) -> int:
    """How many ranges of the job are in stock (as stock_specs)."""
    return conn.execute(
        "SELECT count(*) FROM event_ranges WHERE panda_id = ? AND state = ? AND worker_id IS NULL",
        (panda_id, R.FETCHED.value),
    ).fetchone()[0]


def stock_count(conn: sqlite3.Connection, panda_id: int) -> int:
    return conn.execute(
        "SELECT count(*) FROM event_ranges WHERE panda_id = ? AND state = ?", (panda_id, R.FETCHED.value)
    ).fetchone()[0]


def stock_ids(conn: sqlite3.Connection, panda_id: int) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT range_id FROM event_ranges WHERE panda_id = ? AND state = ?", (panda_id, R.FETCHED.value)
        )
    ]


def answered(conn: sqlite3.Connection, worker_id: int, request_seq: int) -> list[sqlite3.Row]:
    """(spec, panda_id) of the ranges that answered the worker's request `request_seq` (request_seq index)."""
    return conn.execute(
        "SELECT spec, panda_id FROM event_ranges WHERE worker_id = ? AND request_seq = ?", (worker_id, request_seq)
    ).fetchall()


def assign(conn: sqlite3.Connection, range_ids: list[str], worker_id: int, request_seq: int) -> None:
    """Hand ranges to the worker as the answer to its request (with the FETCHED -> DISPATCHED transition)."""
    conn.execute(
        "UPDATE event_ranges SET worker_id = ?, request_seq = ? WHERE range_id IN (SELECT value FROM json_each(?))",
        (worker_id, request_seq, json.dumps(range_ids)),
    )


def assign_each(conn: sqlite3.Connection, rows: list[tuple[str, int, int]]) -> None:
    """assign() of many answers: [(range_id, worker_id, request_seq), ...] in one statement."""
    conn.executemany(
        "UPDATE event_ranges SET worker_id = ?, request_seq = ? WHERE range_id = ?", [(w, s, i) for i, w, s in rows]
    )


def by_ids(conn: sqlite3.Connection, range_ids: list[str]) -> dict[str, sqlite3.Row]:
    """{range_id: (range_id, panda_id, first_event, last_event, worker_id, state)} of the known ones."""
    return {
        r[0]: r
        for r in conn.execute(
            "SELECT range_id, panda_id, first_event, last_event, worker_id, state FROM event_ranges "
            "WHERE range_id IN (SELECT value FROM json_each(?))",
            (json.dumps(range_ids),),
        )
    }


def set_result(conn: sqlite3.Connection, range_id: str, result: dict[str, Any]) -> None:
    """The pilot's report on the range (kept as JSON)."""
    conn.execute("UPDATE event_ranges SET result = ? WHERE range_id = ?", (json.dumps(result), range_id))


def set_results(conn: sqlite3.Connection, results: list[tuple[str, dict[str, Any]]]) -> None:
    """set_result for many ranges: [(range_id, report), ...] in one statement."""
    conn.executemany("UPDATE event_ranges SET result = ? WHERE range_id = ?", [(json.dumps(r), i) for i, r in results])


def workers_ended_holding(conn: sqlite3.Connection) -> list[int]:
    """Ended workers that still have ranges dispatched to them."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT e.worker_id FROM event_ranges e JOIN workers w ON w.id = e.worker_id "
            "WHERE e.state = ? AND w.state IN (?, ?, ?, ?)",
            (R.DISPATCHED.value, *(s.value for s in WORKER_ENDED)),
        )
    ]


def dispatched_to(conn: sqlite3.Connection, worker_id: int) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT range_id FROM event_ranges WHERE worker_id = ? AND state = ?", (worker_id, R.DISPATCHED.value)
        )
    ]


def delete_of_jobs(conn: sqlite3.Connection, panda_ids: list[int]) -> int:
    ids = ",".join("?" * len(panda_ids))
    return conn.execute(f"DELETE FROM event_ranges WHERE panda_id IN ({ids})", panda_ids).rowcount


def count_by_state(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(state, count) rows."""
    return conn.execute("SELECT state, count(*) FROM event_ranges GROUP BY state").fetchall()


def of_job(conn: sqlite3.Connection, panda_id: int) -> list[sqlite3.Row]:
    """(first_event, last_event, state, worker_id) of the job's ranges."""
    return conn.execute(
        "SELECT first_event, last_event, state, worker_id FROM event_ranges WHERE panda_id=?", (panda_id,)
    ).fetchall()


def rank_timings(conn: sqlite3.Connection, worker_id: int) -> list[sqlite3.Row]:
    """(rank, startTime, endTime) from the pilot's reports on the worker's ranges (valid JSON results only)."""
    return conn.execute(
        "SELECT json_extract(result, '$.rank'), json_extract(result, '$.startTime'), "
        "json_extract(result, '$.endTime') FROM event_ranges WHERE worker_id=? AND result IS NOT NULL "
        "AND json_valid(result)",
        (worker_id,),
    ).fetchall()


def reports_of_task(conn: sqlite3.Connection, task_id: int) -> list[str]:
    """The pilots' reports (JSON) on the task's finished and failed ranges."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT e.result FROM event_ranges e JOIN jobs j ON j.panda_id = e.panda_id "
            "WHERE j.task_id = ? AND e.state IN (?, ?) AND e.result IS NOT NULL",
            (task_id, R.FINISHED.value, R.FAILED.value),
        )
    ]
