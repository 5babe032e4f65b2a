"""The payload_logs and payload_log_totals tables: pilots' payload output lines, per job, bounded per job.

A line is unique by (harvester_id, source, src_offset): the harvester's name of the file it read (worker and file)
and the line's byte offset in it, so a batch sent twice (a daemon killed between sending and noting its offset)
stores each line once. payload_log_totals holds each job's stored bytes and lines, and whether lines were dropped
at the bound (truncated, dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .conn import Conn
from .pg import is_pg

if TYPE_CHECKING:
    from ..paylogs import LogFilter

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


def known(conn: Conn, harvester_id: str, source: str, offsets: Sequence[int]) -> set[int]:
    """The offsets among these already stored for (harvester, source): one range read of the unique index."""
    if not offsets:
        return set()
    cur = conn.execute(
        "SELECT src_offset FROM payload_logs WHERE harvester_id = ? AND source = ? AND src_offset BETWEEN ? AND ?",
        (harvester_id, source, min(offsets), max(offsets)),
    )
    wanted = set(offsets)
    return {int(r[0]) for r in cur if int(r[0]) in wanted}


CHUNK = 512  # rows of one SQLite INSERT (x 11 values: within its limit on a statement's parameters)


def chunks(n: int) -> list[tuple[int, int]]:
    """(start, size) of the statements for n rows: CHUNK at a time, the rest in powers of two, so that only
    log2(CHUNK) + 1 statement texts exist (SQLite's statement cache and translate()'s keep the hot path's)."""
    out, at = [], 0
    while n - at >= CHUNK:
        out.append((at, CHUNK))
        at += CHUNK
    size = CHUNK
    while at < n:
        size //= 2
        if n - at >= size:
            out.append((at, size))
            at += size
    return out


# PostgreSQL: the whole batch in one statement of 11 arrays (psycopg parses a statement's text in Python: one of
# thousands of placeholders would cost more than the rows)
PG_INSERT = (
    f"INSERT INTO payload_logs ({COLUMNS}) SELECT * FROM unnest(?::bigint[], ?::bigint[], ?::text[], ?::bigint[], "
    "?::bigint[], ?::text[], ?::text[], ?::float8[], ?::text[], ?::text[], ?::bigint[]) "
    "ON CONFLICT DO NOTHING RETURNING src_offset"
)


def insert_many(conn: Conn, rows: Sequence[Sequence[Any]]) -> set[int]:
    """Lines of one (harvester, source) (COLUMNS' order), in order, in one statement (PostgreSQL) or multi-row
    INSERTs of CHUNK (SQLite); the offsets of those stored: a line whose (harvester, source, offset) is stored
    already is not (ON CONFLICT DO NOTHING, on both backends)."""
    if not rows:
        return set()
    if is_pg(conn):
        found = conn.execute(PG_INSERT, [list(column) for column in zip(*rows, strict=True)]).fetchall()
        return {int(r[0]) for r in found}
    stored: set[int] = set()
    for at, size in chunks(len(rows)):
        values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * size)
        args = [value for row in rows[at : at + size] for value in row]
        cur = conn.execute(
            f"INSERT INTO payload_logs ({COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING RETURNING src_offset",
            args,
        )
        stored.update(int(r[0]) for r in cur.fetchall())
    return stored


def set_totals(conn: Conn, panda_id: int, values: tuple[int, int, int, int]) -> None:
    conn.execute(
        "INSERT INTO payload_log_totals (panda_id, bytes, lines, truncated, dropped) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (panda_id) DO UPDATE SET bytes = excluded.bytes, lines = excluded.lines, "
        "truncated = excluded.truncated, dropped = excluded.dropped",
        (panda_id, *values),
    )


def query(conn: Conn, flt: LogFilter, grep: str | None) -> list[dict[str, Any]]:
    """Lines with id > flt.after matching the filter, oldest first (grep: the filter's text as stored, a
    case-sensitive substring); flt.newest: the last flt.limit of them (still oldest first), else the first."""
    where: list[str] = ["id > ?"]
    args: list[Any] = [flt.after]
    for column, value in (
        ("task_id", flt.task_id),
        ("panda_id", flt.panda_id),
        ("rank_nr", flt.rank),
        ("stream", flt.stream),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if grep:
        where.append("strpos(msg, ?) > 0" if is_pg(conn) else "instr(msg, ?) > 0")
        args.append(grep)
    rows = conn.execute(
        f"SELECT id, {COLUMNS} FROM payload_logs WHERE {' AND '.join(where)} "
        f"ORDER BY id {'DESC' if flt.newest else ''} LIMIT ?",
        (*args, flt.limit),
    ).fetchall()
    if flt.newest:
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
