"""The payload_logs and payload_log_totals tables: pilots' payload output lines, per job, bounded per job.

A line is unique by (harvester_id, source, src_offset): the harvester's name of the file it read (worker and file)
and the line's byte offset in it, so a batch sent twice (a daemon killed between sending and noting its offset)
stores each line once. payload_log_totals holds each job's stored bytes and lines, and whether lines were dropped
at the bound (truncated, dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .conn import Conn
from .pg import is_pg

COLUMNS = "panda_id, task_id, harvester_id, worker_id, rank_nr, range_id, stream, at, msg, source, src_offset"


def totals(conn: Conn, panda_ids: Iterable[int]) -> dict[int, tuple[int, int, int, int]]:
    """panda_id -> (bytes, lines, truncated, dropped) of the jobs that have any."""
    ids = sorted(set(panda_ids))
    out: dict[int, tuple[int, int, int, int]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT panda_id, bytes, lines, truncated, dropped FROM payload_log_totals WHERE panda_id IN ({marks})",
            chunk,
        ):
            out[int(row[0])] = (int(row[1]), int(row[2]), int(row[3]), int(row[4]))
    return out


def insert(conn: Conn, row: Sequence[Any]) -> bool:
    """One line (COLUMNS' order); False when that (harvester, source, offset) is stored already."""
    cur = conn.execute(
        f"INSERT OR IGNORE INTO payload_logs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(row)
    )
    return cur.rowcount == 1


def set_totals(conn: Conn, panda_id: int, values: tuple[int, int, int, int]) -> None:
    conn.execute(
        "INSERT INTO payload_log_totals (panda_id, bytes, lines, truncated, dropped) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (panda_id) DO UPDATE SET bytes = excluded.bytes, lines = excluded.lines, "
        "truncated = excluded.truncated, dropped = excluded.dropped",
        (panda_id, *values),
    )


def query(
    conn: Conn,
    task_id: int | None,
    panda_id: int | None,
    rank: int | None,
    stream: str | None,
    grep: str | None,
    after: int,
    limit: int,
    newest: bool = False,
) -> list[dict[str, Any]]:
    """Lines with id > after matching the filters, oldest first (grep: a case-sensitive substring); newest: the
    last `limit` of them (still oldest first), else the first."""
    where: list[str] = ["id > ?"]
    args: list[Any] = [after]
    for column, value in (("task_id", task_id), ("panda_id", panda_id), ("rank_nr", rank), ("stream", stream)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if grep:
        where.append("strpos(msg, ?) > 0" if is_pg(conn) else "instr(msg, ?) > 0")
        args.append(grep)
    rows = conn.execute(
        f"SELECT id, {COLUMNS} FROM payload_logs WHERE {' AND '.join(where)} "
        f"ORDER BY id {'DESC' if newest else ''} LIMIT ?",
        (*args, limit),
    ).fetchall()
    if newest:
        rows = rows[::-1]
    return [
        {
            "id": r[0],
            "job": r[1],
            "task": r[2],
            "worker": r[4],
            "rank": r[5],
            "range": r[6],
            "stream": r[7],
            "time": r[8],
            "msg": r[9],
        }
        for r in rows
    ]


def truncated(conn: Conn, task_id: int | None, panda_id: int | None) -> list[dict[str, Any]]:
    """{job, bytes, lines, dropped} of the jobs (of the task, or the one job) whose log reached its bound."""
    if panda_id is not None:
        sql, args = (
            "SELECT panda_id, bytes, lines, dropped FROM payload_log_totals WHERE truncated=1 AND panda_id=?",
            [panda_id],
        )
    elif task_id is not None:
        sql = (
            "SELECT t.panda_id, t.bytes, t.lines, t.dropped FROM payload_log_totals t JOIN jobs j "
            "ON j.panda_id = t.panda_id WHERE t.truncated=1 AND j.task_id=?"
        )
        args = [task_id]
    else:
        sql, args = "SELECT panda_id, bytes, lines, dropped FROM payload_log_totals WHERE truncated=1", []
    return [{"job": r[0], "bytes": r[1], "lines": r[2], "dropped": r[3]} for r in conn.execute(sql, args)]


def jobs_of(conn: Conn, panda_ids: list[int]) -> dict[int, Any]:
    """panda_id -> row (panda_id, task_id, harvester_id, worker_id) of those that exist (ownership.Judge reads it)."""
    out: dict[int, Any] = {}
    for i in range(0, len(panda_ids), 500):
        chunk = panda_ids[i : i + 500]
        for row in conn.execute(
            "SELECT panda_id, task_id, harvester_id, worker_id FROM jobs "
            f"WHERE panda_id IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            out[int(row["panda_id"])] = row
    return out
