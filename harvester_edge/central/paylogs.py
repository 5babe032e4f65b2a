"""Payload logs in the central service: batches of pilots' output lines from a harvester, stored per job under a
bound, and read back with filters (the monitor, `harvester-edge logs`).

Upload (v1 logs/upload, harvester scope): {harvester_id, source, records: [{offset, job, rank, range, stream, time,
msg, worker}]}. `source` names the file the harvester read (its worker and file name), `offset` each line's byte
offset in it: a line already stored under (harvester, source, offset) is skipped, so a batch sent again after a
crash stores nothing twice. Each job must be one the caller may change (ownership.Judge, as for its ranges): the
lines of a foreign or unknown job are refused per job, the others stored. A job's lines are stored until their
text reaches `payload_log_max_mb` (central settings); from then on its lines are counted as dropped and the job is
marked truncated, which every read reports.
"""

from __future__ import annotations

from typing import Any

from .ownership import Caller, Judge
from .store import paylogs as rows

MAX_MSG = 16 * 1024  # characters of one line (the pilot cuts lines at 8 KiB)
STREAMS = ("stdout", "stderr", "meta")


def text(value: str | None) -> str | None:
    """Text as both backends store it: PostgreSQL's text holds no NUL, so a NUL becomes U+FFFD on both."""
    return None if value is None else value.replace("\x00", "\ufffd")


def store(
    conn: Any, harvester_id: str, source: str, records: list[dict[str, Any]], cap: int, caller: Caller
) -> dict[str, Any]:
    """Store a batch (already validated field by field); {stored, duplicate, dropped, refused: [PandaIDs]}."""
    ids = sorted({int(r["job"]) for r in records})
    jobs = rows.jobs_of(conn, ids)
    judge = Judge(conn, caller)
    refused = sorted(i for i in ids if i not in jobs or not judge.allows(jobs[i]))
    totals = rows.totals(conn, [i for i in ids if i not in refused])
    changed: dict[int, list[int]] = {}
    stored = duplicate = dropped = 0
    for rec in records:
        job = int(rec["job"])
        if job in refused:
            continue
        size, lines, truncated, lost = changed.get(job) or list(totals.get(job, (0, 0, 0, 0)))
        msg = text(rec["msg"]) or ""
        cost = len(msg.encode("utf-8", "replace"))
        if rec["stream"] == "meta" and rec.get("truncated"):  # a rank's own file bound was hit: say so too
            truncated = 1
        if lost or size + cost > cap:  # the bound was hit: nothing more of this job (no gaps in what is kept)
            changed[job] = [size, lines, 1, lost + 1]
            dropped += 1
            continue
        row = (
            job,
            int(jobs[job]["task_id"]),  # the job's task, whatever the pilot's file claims
            harvester_id,
            rec.get("worker"),
            int(rec["rank"]),
            text(rec.get("range")),
            rec["stream"],
            float(rec["time"]),
            msg,
            source,
            int(rec["offset"]),
        )
        if rows.insert(conn, row):
            stored += 1
            changed[job] = [size + cost, lines + 1, truncated, lost]
        else:
            duplicate += 1
            changed.setdefault(job, [size, lines, truncated, lost])
    for job, values in changed.items():
        if tuple(values) != totals.get(job):
            rows.set_totals(conn, job, (values[0], values[1], values[2], values[3]))
    return {"stored": stored, "duplicate": duplicate, "dropped": dropped, "refused": refused}


def read(
    conn: Any,
    task_id: int | None = None,
    panda_id: int | None = None,
    rank: int | None = None,
    stream: str | None = None,
    grep: str | None = None,
    after: int = 0,
    limit: int = 1000,
    newest: bool = False,
) -> dict[str, Any]:
    """{lines (oldest first, id > after; newest: the last `limit`), last_id (pass it as `after` to follow),
    truncated: [{job, bytes, lines, dropped}] of the matching jobs whose bound was hit}."""
    lines = rows.query(conn, task_id, panda_id, rank, stream, text(grep), after, limit, newest)
    return {
        "lines": lines,
        "last_id": lines[-1]["id"] if lines else after,
        "truncated": rows.truncated(conn, task_id, panda_id),
    }
