"""Payload logs in the central service: batches of pilots' output lines from a harvester, stored per job under a
bound, and read back with filters (the monitor, `harvester-edge logs`).

Upload (v1 logs/upload, harvester scope): {harvester_id, source, records: [{offset, job, rank, range, stream, time,
msg, worker}]}. `source` names the file the harvester read (its worker and file name), `offset` each line's byte
offset in it: a line already stored under (harvester, source, offset) is skipped, so a batch sent again after a
crash stores nothing twice. Each job must be one the caller may change (ownership.Judge, as for its ranges): the
lines of a foreign or unknown job are refused per job, the others stored. A job's lines are stored until their
text reaches `payload_log_max_mb` (central settings); from then on its lines are counted as dropped and the job is
marked truncated, which every read reports.

A read is described by one LogFilter (task, job, rank, stream, text, after id, limit): built once where the request
comes in (the v1 route's query parameters, the monitor page's, `harvester-edge logs`' options), validated here,
and passed as it is through the service to the SQL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import InvalidInput
from .limits import BIG
from .ownership import Caller, Judge
from .store import paylogs as rows

MAX_MSG = 16 * 1024  # characters of one line (the pilot cuts lines at 8 KiB)
STREAMS = ("stdout", "stderr", "meta")
MAX_GREP = 256  # characters of a read's text filter
MAX_LIMIT = 10_000  # lines of one read
MAX_RANK = 2**31 - 1


@dataclass(frozen=True)
class LogFilter:
    """Which lines a read returns: of the task / job / rank / stream, containing `grep` (a case-sensitive
    substring), with id > after, at most `limit`; newest: the last `limit` of them (else the first), oldest first."""

    task_id: int | None = None
    panda_id: int | None = None
    rank: int | None = None
    stream: str | None = None
    grep: str | None = None
    after: int = 0
    limit: int = 1000
    newest: bool = False

    def __post_init__(self) -> None:
        for name, top in (("task_id", BIG), ("panda_id", BIG), ("rank", MAX_RANK), ("after", BIG)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top):
                raise InvalidInput(f"payload log filter: {name} must be a whole number 0..{top}, got {value!r}")
        if self.stream is not None and self.stream not in STREAMS:
            raise InvalidInput(f"stream must be stdout, stderr or meta, got {str(self.stream)[:40]!r}")
        if self.grep is not None and (not isinstance(self.grep, str) or len(self.grep) > MAX_GREP):
            raise InvalidInput(f"payload log filter: grep must be text of at most {MAX_GREP} characters")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidInput(f"payload log filter: limit must be a whole number 1..{MAX_LIMIT}, got {self.limit!r}")

    def query(self) -> dict[str, Any]:
        """The query parameters of /api/v1/logs/list for it (the ones set; that route has no `newest`)."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "newest"}


def text(value: str | None) -> str | None:
    """Text as both backends store it: PostgreSQL's text holds no NUL, so a NUL becomes U+FFFD on both."""
    return None if value is None else value.replace("\x00", "\ufffd")


def store(
    conn: Any, harvester_id: str, source: str, records: list[dict[str, Any]], cap: int, caller: Caller
) -> dict[str, Any]:
    """Store a batch (already validated field by field); {stored, duplicate, dropped, refused: [PandaIDs]}.
    The lines already stored are read first (one range read of the caller's own source), the bound applied in
    order in memory, and the new lines written in a few statements (store/paylogs.insert_many: multi-row INSERTs
    on SQLite, one INSERT of arrays on PostgreSQL), not one a line: the single writer is held that much shorter."""
    ids = sorted({int(r["job"]) for r in records})
    jobs = rows.jobs_of(conn, ids)
    judge = Judge(conn, caller)
    refused = sorted(i for i in ids if i not in jobs or not judge.allows(jobs[i]))
    totals = rows.totals(conn, [i for i in ids if i not in refused])
    seen = rows.known(conn, harvester_id, source, [int(r["offset"]) for r in records if int(r["job"]) not in refused])
    changed: dict[int, list[int]] = {}
    new: list[tuple[Any, ...]] = []
    costs: dict[int, tuple[int, int]] = {}  # offset -> (job, bytes) of the lines to insert
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
        offset = int(rec["offset"])
        if offset in seen:  # stored before, or earlier in this batch
            duplicate += 1
            changed.setdefault(job, [size, lines, truncated, lost])
            continue
        seen.add(offset)
        new.append(
            (
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
                offset,
            )
        )
        costs[offset] = (job, cost)
        stored += 1
        changed[job] = [size + cost, lines + 1, truncated, lost]
    if new:
        written = rows.insert_many(conn, new)
        for offset, (job, cost) in costs.items():
            if offset not in written:  # stored meanwhile by another writer (PostgreSQL, N processes)
                stored, duplicate = stored - 1, duplicate + 1
                changed[job][0] -= cost
                changed[job][1] -= 1
    for job, values in changed.items():
        if tuple(values) != totals.get(job):
            rows.set_totals(conn, job, (values[0], values[1], values[2], values[3]))
    return {"stored": stored, "duplicate": duplicate, "dropped": dropped, "refused": refused}


def read(conn: Any, flt: LogFilter) -> dict[str, Any]:
    """{lines (oldest first, id > after; newest: the last `limit`), last_id (pass it as `after` to follow),
    truncated: [{job, bytes, lines, dropped}] of the matching jobs whose bound was hit}."""
    lines = rows.query(conn, flt, text(flt.grep))
    return {
        "lines": lines,
        "last_id": lines[-1]["id"] if lines else flt.after,
        "truncated": rows.truncated(conn, flt.task_id, flt.panda_id),
    }
