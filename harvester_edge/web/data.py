"""What the monitor shows, read from the central DB (through the service's readers) and the harvester's DB.

The harvester DB is opened read-only per request (SQLite WAL: never blocks the daemon); when it is not on this
machine the pages show the central service's view alone. Pure functions of (connections, ids, now).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harvester_edge import archives, pilot_files, pledges
from harvester_edge.central.states import RangeStatus
from harvester_edge.central.store import monitor
from harvester_edge.central.store.conn import Conn
from harvester_edge.store import history as history_rows
from harvester_edge.store import job_workers as worker_links
from harvester_edge.store import jobs as job_rows
from harvester_edge.store import meta as meta_rows
from harvester_edge.store import queues as queue_rows
from harvester_edge.store import ranges as range_rows
from harvester_edge.store import workers as worker_rows
from harvester_edge.store.readonly import open_readonly
from jumbo.protocol import ATTRIBUTES, BAD_SUFFIX, HEARTBEAT, JOB_REPORT, REQUESTS, STATUS, ProtocolError

log = logging.getLogger(__name__)
RANGE_NAMES = {int(s): s.name.lower() for s in RangeStatus}
SCRIPT_NAMES = ("worker.sh", "worker.sbatch", "worker.bsub")
TEXT_TAIL = 256 * 1024
MAX_LISTED = 2000  # entries of an access point looked at per page: a pilot cannot make a page slow with files
MAX_PARSED = 20  # files moved aside whose content a page parses again to say why
PILOT_STREAM = re.compile(rf"^({STATUS}|{REQUESTS})\.\d+\.json(\{BAD_SUFFIX})?$")


def open_harvester(path: Path | None) -> sqlite3.Connection | None:
    if path is None or not Path(path).exists():
        return None
    return open_readonly(path)


# -- dashboard ------------------------------------------------------------------------------------------------
def events_per_minute(central: Conn, now: float, minutes: int = 30) -> list[tuple[str, float]]:
    """Events finished in each of the last `minutes` minutes (by the time their range was reported)."""
    first = int(now // 60) - minutes + 1
    done = monitor.events_per_minute(central, int(RangeStatus.FINISHED), first * 60)
    return [
        (f"-{minutes - 1 - i}m" if i < minutes - 1 else "now", float(done.get(first + i, 0))) for i in range(minutes)
    ]


def workers_by_queue(harvester: sqlite3.Connection | None, central: Conn) -> list[dict]:
    """{queue, state, count}: the harvester's own view when it is here, else what harvesters reported."""
    if harvester is not None:
        return [dict(r) for r in worker_rows.count_by_queue_state(harvester)]
    return monitor.workers_by_site(central)


# -- task -----------------------------------------------------------------------------------------------------
def task_errors(central: Conn, task_id: int) -> list[dict]:
    return monitor.range_errors(central, task_id) + monitor.job_errors(central, task_id)


def error_groups(central: Conn) -> list[dict]:
    """Every failure grouped by (source, code, message), across tasks."""
    return monitor.all_range_errors(central) + monitor.job_errors(central)


# -- job ------------------------------------------------------------------------------------------------------
def central_job(central: Conn, panda_id: int) -> dict | None:
    return monitor.job(central, panda_id)


LOG_TARBALL_CAP = 256 * 1024 * 1024


def pilot_fields(job: dict) -> dict:
    """What the PanDA pilot reported for a job, for its page: state history, timing, CPU, log tail, log file."""
    try:
        history = json.loads(job.get("state_history") or "[]")
    except ValueError:
        history = []
    try:
        log_file = json.loads(job["log_file"]) if job.get("log_file") else None
    except ValueError:
        log_file = None
    names = ("getJob", "stage-in", "payload", "stage-out", "initial setup", "setup")
    timing = [(n, t) for n, t in zip(names, (job.get("pilot_timing") or "").split("|")) if t != ""]
    return {
        "history": [{"state": s, "time": t} for s, t in history if isinstance(s, str)],
        "timing": timing,
        "log_file": log_file if isinstance(log_file, dict) else None,
    }


def find_log_tarball(log_dir: Path | None, lfn: str | None) -> tuple[Path, str] | None:
    """(directory, name relative to it) of a job's log tarball under the pilots' log directory: <dir>/<lfn> or
    <dir>/<sub>/<lfn>, never through a symbolic link (pilot_files reads it), or None."""
    if log_dir is None or not lfn or "/" in lfn or lfn.startswith("."):
        return None
    if pilot_files.check(log_dir, lfn) is None:
        return Path(log_dir), lfn
    try:
        subdirs = sorted(e.name for e in os.scandir(log_dir) if e.is_dir(follow_symlinks=False))
    except OSError:
        return None
    for sub in subdirs[-1000:]:
        if pilot_files.check(log_dir, f"{sub}/{lfn}", LOG_TARBALL_CAP) is None:
            return Path(log_dir), f"{sub}/{lfn}"
    return None


def job_ranges(central: Conn, harvester: sqlite3.Connection | None, panda_id: int, task_id: int) -> list[dict]:
    """The central ranges last handed to this job, with the harvester's worker and state when known."""
    local = {
        (r["first_event"], r["last_event"]): r
        for r in ([] if harvester is None else range_rows.of_job(harvester, panda_id))
    }
    out = []
    for r in monitor.job_ranges(central, task_id, panda_id):
        row = dict(r)
        row["status"] = RANGE_NAMES.get(row["status"], str(row["status"]))
        here = local.get((row["start_event"], row["last_event"]))
        row["harvester_state"] = here["state"] if here else ""
        row["worker"] = here["worker_id"] if here else None
        out.append(row)
    return out


def job_workers(harvester: sqlite3.Connection | None, panda_id: int) -> list[dict]:
    return [] if harvester is None else [dict(r) for r in worker_rows.of_job(harvester, panda_id)]


# -- worker ---------------------------------------------------------------------------------------------------
def worker_archive(harvester: sqlite3.Connection | None, worker_id: int) -> dict | None:
    """{path, size} of the worker's access point archive (harvester_edge.archives), if the daemon keeps one."""
    where = None if harvester is None else meta_rows.archive_dir(harvester)
    path = archives.find_archive(where, worker_id)
    if path is None:
        return None
    try:
        return {"path": path, "size": path.stat().st_size}
    except OSError:
        return None


def worker(harvester: sqlite3.Connection | None, worker_id: int) -> dict | None:
    row = None if harvester is None else worker_rows.get(harvester, worker_id)
    return dict(row) if row else None


def state_history(harvester: sqlite3.Connection | None, kind: str, object_id: Any) -> list[dict]:
    return [] if harvester is None else [dict(r) for r in history_rows.of_object(harvester, kind, object_id)]


def worker_jobs(harvester: sqlite3.Connection | None, worker_id: int) -> list[int]:
    return [] if harvester is None else worker_links.jobs_of_worker(harvester, worker_id)


def ap_files(ap: Path) -> dict[str, list[str]]:
    """The access point's human-readable files by role: script, stdout/stderr, logs (relative names).

    Names only, never following a link: what each one is (a link, a FIFO, a huge file) is for the reader
    (harvester_edge.pilot_files) to find out, and the pages show it as unreadable."""
    found: dict[str, list[str]] = {"script": [], "output": [], "logs": []}
    for entry in _entries(ap):
        name = entry.name
        if name in SCRIPT_NAMES or name.endswith((".sbatch", ".bsub")):
            found["script"].append(name)
        elif name.endswith((".out", ".err")) or name in ("stdout", "stderr"):
            found["output"].append(name)
        elif name == "logs" and entry.is_dir(follow_symlinks=False):
            found["logs"] = [f"logs/{e.name}" for e in _entries(ap / "logs")]
    return found


def _entries(folder: Path, limit: int = MAX_LISTED) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(itertools.islice(it, limit), key=lambda e: e.name)
    except OSError:
        return []


def plain_name(name: str) -> bool:
    """A relative name below the access point without '..', '.' or empty parts (what a page may ask for)."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def text_file(ap: Path, name: str, limit: int = TEXT_TAIL) -> dict | None:
    """{"text", "cut", "size"} of a log/stdout/script file's tail, or {"unreadable": reason}; None when missing."""
    try:
        text, cut, size = pilot_files.read_tail(ap, name, limit)
    except pilot_files.Unreadable as exc:
        return {"unreadable": exc.reason}
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"unreadable": exc.strerror or str(exc)}
    return {"text": text, "cut": cut, "size": size}


def _pilot_file(ap: Path, name: str, read) -> tuple[dict | None, str | None]:
    """(what read() gives or None, why the pilot file is unreadable or None): a page never fails on a pilot file."""
    try:
        return read(), None
    except pilot_files.Unreadable as exc:
        return None, exc.reason
    except ProtocolError as exc:
        return None, _short(exc, ap / name)
    except OSError as exc:
        return None, exc.strerror or str(exc)


def heartbeat(ap: Path) -> tuple[dict | None, str | None]:
    """(the pilot's heartbeat or None, why it is unreadable or None)."""
    return _pilot_file(ap, HEARTBEAT, lambda: pilot_files.read_heartbeat(ap))


def job_report(ap: Path) -> tuple[dict | None, str | None]:
    """(jobReport.json or None, why it is unreadable or None)."""
    return _pilot_file(ap, JOB_REPORT, lambda: pilot_files.read_report(ap, JOB_REPORT))


def monitor_samples(ap: Path) -> tuple[dict[int, list[dict]], dict[str, str]]:
    """prmon samples per rank and {file: why it (or some of its lines) is unreadable}."""
    return pilot_files.read_monitor(ap)


def _short(exc: Exception, path: Path) -> str:
    return str(exc).removeprefix(f"{path}: ")


def pilot_files_state(ap: Path) -> list[dict]:
    """The files the pilot writes for the daemon, each {name, state, reason}: state is "ok", "unreadable" or
    "moved aside" (by the daemon, as NAME.bad); files already consumed (.read) are not listed."""
    out, parsed = [], 0
    for entry in _entries(ap):
        name = entry.name
        base = name.removesuffix(BAD_SUFFIX)
        fixed = base in (HEARTBEAT, JOB_REPORT, ATTRIBUTES) or pilot_files.MONITOR_FILE.match(base)
        if not (fixed or PILOT_STREAM.match(name)):
            continue
        moved = name.endswith(BAD_SUFFIX)
        reason = pilot_files.check(ap, name, pilot_files.STATUS_CAP)
        if reason is None and moved:  # say why the daemon refused it: its loader's message (a few per page)
            parsed += 1
            reason = _content_fault(ap, name) if parsed <= MAX_PARSED else "not checked (too many)"
        state = "moved aside" if moved else ("unreadable" if reason else "ok")
        out.append({"name": name, "state": state, "reason": reason or ""})
    return out


def _content_fault(ap: Path, name: str) -> str | None:
    """Why a stream file's content was refused (its loader's message), or None."""
    loaders: dict[str, Callable[[Path], object]] = {
        STATUS: pilot_files.load_event_status,
        REQUESTS: pilot_files.load_event_request,
        HEARTBEAT: lambda path: pilot_files.heartbeat_of(path.parent, path.name),
    }
    loader = next((f for prefix, f in loaders.items() if name.startswith(prefix)), None)
    if loader is None:
        return None
    try:
        loader(ap / name)
    except pilot_files.Unreadable as exc:
        return exc.reason
    except ProtocolError as exc:
        return _short(exc, ap / name)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


# -- sites ----------------------------------------------------------------------------------------------------
def queues(harvester: sqlite3.Connection | None) -> list[dict]:
    if harvester is None:
        return []
    rows = [dict(r) for r in queue_rows.all_queues(harvester)]
    counts = worker_rows.count_by_queue_state(harvester)
    jobs = job_rows.count_by_queue_state(harvester)
    for q in rows:
        q["workers"] = {c["state"]: c["count"] for c in counts if c["queue"] == q["name"]}
        q["jobs"] = {c["state"]: c["n"] for c in jobs if c["queue"] == q["name"]}
    return rows


def pledge_usage(harvester: sqlite3.Connection | None, now: float) -> dict | None:
    """Cores in use and core-hours of the last day against each queue's pledge (None: no harvester DB, or one
    the daemon has not migrated yet)."""
    if harvester is None:
        return None
    try:
        return pledges.usage(harvester, pledges.facts_of_db(harvester), now)
    except sqlite3.OperationalError:
        return None


def harvesters(central: Conn) -> list[dict]:
    return monitor.harvesters(central)


def sites(central: Conn) -> list[dict]:
    rows = monitor.jobs_by_site(central)
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
