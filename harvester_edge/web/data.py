"""What the monitor shows, read from the central DB (through the service's readers) and the harvester's DB.

The harvester DB is opened read-only per request (SQLite WAL: never blocks the daemon); when it is not on this
machine the pages show the central service's view alone. Pure functions of (connections, ids, now).
"""
from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

from harvester_edge.central.states import RangeStatus

log = logging.getLogger(__name__)
RANGE_NAMES = {int(s): s.name.lower() for s in RangeStatus}
SCRIPT_NAMES = ("worker.sh", "worker.sbatch", "worker.bsub")
TEXT_TAIL = 256 * 1024


def open_harvester(path: Path | None) -> sqlite3.Connection | None:
    if path is None or not Path(path).exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def _rows(conn: sqlite3.Connection | None, sql: str, args: tuple = ()) -> list[dict]:
    if conn is None:
        return []
    return [dict(r) for r in conn.execute(sql, args)]


# -- dashboard ------------------------------------------------------------------------------------------------
def events_per_minute(central: sqlite3.Connection, now: float, minutes: int = 30) -> list[tuple[str, float]]:
    """Events finished in each of the last `minutes` minutes (by the time their range was reported)."""
    first = int(now // 60) - minutes + 1
    done = dict(central.execute(
        "SELECT CAST(modified / 60 AS INTEGER) AS m, sum(last_event - start_event + 1) FROM ranges "
        "WHERE status=? AND modified >= ? GROUP BY m", (int(RangeStatus.FINISHED), first * 60)).fetchall())
    return [(f"-{minutes - 1 - i}m" if i < minutes - 1 else "now", float(done.get(first + i, 0)))
            for i in range(minutes)]


def workers_by_queue(harvester: sqlite3.Connection | None, central: sqlite3.Connection) -> list[dict]:
    """{queue, state, count}: the harvester's own view when it is here, else what harvesters reported."""
    if harvester is not None:
        return _rows(harvester, "SELECT queue, state, count(*) AS count FROM workers GROUP BY queue, state "
                                "ORDER BY queue, state")
    return [dict(r) for r in central.execute(
        "SELECT coalesce(site, '?') AS queue, coalesce(status, pilot_status, '?') AS state, count(*) AS count "
        "FROM workers GROUP BY 1, 2 ORDER BY 1, 2")]


# -- task -----------------------------------------------------------------------------------------------------
def task_errors(central: sqlite3.Connection, task_id: int) -> list[dict]:
    ranges = [dict(r) for r in central.execute(
        "SELECT 'event' AS source, error_code AS code, coalesce(error_diag, '') AS message, count(*) AS count "
        "FROM ranges WHERE task_id=? AND error_code IS NOT NULL AND error_code != 0 GROUP BY 2, 3",
        (task_id,))]
    return ranges + _job_errors(central, "WHERE task_id=?", (task_id,))


def _job_errors(central: sqlite3.Connection, where: str, args: tuple) -> list[dict]:
    out = []
    for source, code, diag in (("pilot", "pilot_error_code", "pilot_error_diag"),
                               ("exe", "exe_error_code", "exe_error_diag"),
                               ("jobDispatcher", "dispatcher_error_code", "dispatcher_error_diag")):
        extra = "AND" if where else "WHERE"
        out += [dict(r) for r in central.execute(
            f"SELECT ? AS source, {code} AS code, {diag} AS message, count(*) AS count FROM jobs {where} "
            f"{extra} {code} != 0 GROUP BY 2, 3", (source, *args))]
    return out


def error_groups(central: sqlite3.Connection) -> list[dict]:
    """Every failure grouped by (source, code, message), across tasks."""
    rows = [dict(r) for r in central.execute(
        "SELECT 'event' AS source, error_code AS code, coalesce(error_diag, '') AS message, count(*) AS count, "
        "group_concat(DISTINCT task_id) AS tasks FROM ranges WHERE error_code IS NOT NULL AND error_code != 0 "
        "GROUP BY 2, 3")]
    return rows + _job_errors(central, "", ())


# -- job ------------------------------------------------------------------------------------------------------
def central_job(central: sqlite3.Connection, panda_id: int) -> dict | None:
    row = central.execute("SELECT * FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
    return dict(row) if row else None


def job_ranges(central: sqlite3.Connection, harvester: sqlite3.Connection | None, panda_id: int,
               task_id: int) -> list[dict]:
    """The central ranges last handed to this job, with the harvester's worker and state when known."""
    local = {(r["first_event"], r["last_event"]): r for r in _rows(
        harvester, "SELECT first_event, last_event, state, worker_id FROM event_ranges WHERE panda_id=?", (panda_id,))}
    out = []
    for r in central.execute("SELECT process_id, start_event, last_event, status, attempt_nr, failures, error_code, "
                             "error_diag, modified FROM ranges WHERE task_id=? AND panda_id=? ORDER BY process_id",
                             (task_id, panda_id)):
        row = dict(r)
        row["status"] = RANGE_NAMES.get(row["status"], str(row["status"]))
        here = local.get((row["start_event"], row["last_event"]))
        row["harvester_state"] = here["state"] if here else ""
        row["worker"] = here["worker_id"] if here else None
        out.append(row)
    return out


def job_workers(harvester: sqlite3.Connection | None, panda_id: int) -> list[dict]:
    return _rows(harvester, "SELECT w.* FROM workers w JOIN job_workers j ON j.worker_id = w.id "
                            "WHERE j.panda_id=? ORDER BY w.id", (panda_id,))


# -- worker ---------------------------------------------------------------------------------------------------
def worker(harvester: sqlite3.Connection | None, worker_id: int) -> dict | None:
    rows = _rows(harvester, "SELECT * FROM workers WHERE id=?", (worker_id,))
    return rows[0] if rows else None


def state_history(harvester: sqlite3.Connection | None, kind: str, object_id: Any) -> list[dict]:
    return _rows(harvester, "SELECT src, dst, at, reason FROM state_history WHERE kind=? AND object_id=? ORDER BY id",
                 (kind, str(object_id)))


def worker_jobs(harvester: sqlite3.Connection | None, worker_id: int) -> list[int]:
    return [r["panda_id"] for r in _rows(harvester, "SELECT panda_id FROM job_workers WHERE worker_id=?",
                                         (worker_id,))]


def ap_files(ap: Path) -> dict[str, list[str]]:
    """The access point's human-readable files by role: script, stdout/stderr, logs (relative names)."""
    found: dict[str, list[str]] = {"script": [], "output": [], "logs": []}
    if not ap.is_dir():
        return found
    for entry in sorted(ap.iterdir()):
        name = entry.name
        if not entry.is_file():
            continue
        if name in SCRIPT_NAMES or name.endswith((".sbatch", ".bsub")):
            found["script"].append(name)
        elif name.endswith((".out", ".err")) or name in ("stdout", "stderr"):
            found["output"].append(name)
    logs = ap / "logs"
    if logs.is_dir():
        found["logs"] = [f"logs/{p.name}" for p in sorted(logs.iterdir()) if p.is_file()]
    return found


def safe_file(ap: Path, name: str) -> Path | None:
    """The file `name` inside the access point, or None when it is outside it or missing."""
    try:
        root = ap.resolve()
        path = (root / name).resolve()
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def read_tail(path: Path, limit: int = TEXT_TAIL) -> tuple[str, bool]:
    """The last `limit` bytes as text; True when the start was cut."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size > limit:
            fh.seek(size - limit)
        data = fh.read(limit)
    return data.decode("utf-8", "replace"), size > limit


def job_report(ap: Path) -> dict | None:
    try:
        return json.loads((ap / "jobReport.json").read_text())
    except (OSError, ValueError):
        return None


# -- sites ----------------------------------------------------------------------------------------------------
def queues(harvester: sqlite3.Connection | None) -> list[dict]:
    rows = _rows(harvester, "SELECT name, batch, draining, updated_at FROM queues ORDER BY name")
    counts = _rows(harvester, "SELECT queue, state, count(*) AS n FROM workers GROUP BY queue, state")
    jobs = _rows(harvester, "SELECT queue, state, count(*) AS n FROM jobs GROUP BY queue, state")
    for q in rows:
        q["workers"] = {c["state"]: c["n"] for c in counts if c["queue"] == q["name"]}
        q["jobs"] = {c["state"]: c["n"] for c in jobs if c["queue"] == q["name"]}
    return rows


def harvesters(central: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in central.execute("SELECT harvester_id, last_heartbeat, attrs FROM harvesters "
                                             "ORDER BY harvester_id")]


def sites(central: sqlite3.Connection) -> list[dict]:
    rows = central.execute("SELECT coalesce(site, '') AS site, status, count(*) AS n FROM jobs GROUP BY 1, 2")
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["site"], {"site": r["site"] or "(not dispatched)", "jobs": {}})["jobs"][r["status"]] = r["n"]
    return list(out.values())


def classification(group: dict, rules: list[dict]) -> str:
    """The class a failure group gets: the longest matching confirmed rule, else the pending suggestion."""
    mine = [r for r in rules if r["source"] == group["source"] and r["code"] == group["code"]]
    for rule in sorted((r for r in mine if r["status"] == "confirmed"), key=lambda r: -len(r["diag_pattern"])):
        try:
            if not rule["diag_pattern"] or re.search(rule["diag_pattern"], group["message"] or ""):
                return rule["class"]
        except re.error:
            continue
    suggested = [r for r in mine if r["status"] == "suggested"]
    return f"{suggested[0]['class']}? (suggested #{suggested[0]['id']})" if suggested else "unclassified"
