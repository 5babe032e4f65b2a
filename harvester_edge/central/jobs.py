"""Jumbo jobs (eventService 4): dispatch, pilot updates, replacement jobs and the task's end, as write functions."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

from . import classify, events, limits
from .errors import IllegalStateChange, InvalidInput, NotFound
from .states import (
    JOB_TERMINAL,
    JOB_WATCHED,
    PILOT_REPORTED,
    RANGE_OPEN,
    JobStatus,
    RangeStatus,
    TaskStatus,
    job_transition_allowed,
)

ACTIVE_TASK = (TaskStatus.DEFINED.value, TaskStatus.RUNNING.value)
LOST_HEARTBEAT = (100, "lost heartbeat")


def _csv(values: list) -> str:
    return ",".join(str(v) for v in values)


def render_job(job: sqlite3.Row | dict, task: sqlite3.Row | dict, remaining_events: int) -> dict[str, Any]:
    """The job description a pilot receives: the fields the real server's JobSpec gives a pilot for the task's
    kind (panda-protocol.md "Job description"); event-service flags only on event-service jobs."""
    pid, name, kind = job["panda_id"], task["name"], task_kind(task)
    log_file, log_guid = f"{name}.{pid}.log.tgz", str(uuid.uuid5(uuid.UUID(task["guid"]), f"log-{pid}"))
    dataset = f"edge.{name}.{task['task_id']}"
    common = {
        "PandaID": pid,
        "taskID": task["task_id"],
        "jediTaskID": task["task_id"],
        "jobsetID": task["task_id"],
        "jobDefinitionID": task["task_id"],
        "jobName": f"{name}.{pid}",
        "attemptNr": job["attempt_nr"],
        "maxAttempt": task["max_attempts"],
        "currentPriority": 1000,
        "processingType": kind,
        "swRelease": "NULL",
        "homepackage": "NULL",
        "cmtConfig": "NULL",
        "transferType": "",
        "sourceSite": "NULL",
        "destinationSE": "local",
        "maxCpuUnit": "HS06sPerEvent",
        "minRamUnit": "MB",
        "maxDiskUnit": "MB",
        "logFile": log_file,
        "logGUID": log_guid,
        "scopeLog": "edge",
        "jobMetrics": "",
        "nucleus": "",
    }
    if kind == "jumbo":
        return {
            **common,
            "transformation": "jumbo",
            "jobPars": json.dumps(json.loads(task["payload"])),
            "prodSourceLabel": "managed",
            "coreCount": 1,
            "maxCpuCount": 0,
            "minRamCount": task["memory_per_rank_mb"],
            "maxDiskCount": 0,
            "maxWalltime": 0,
            "resource_type": "MCORE",
            "inFiles": "",
            "outFiles": "",
            "GUID": "",
            "checksum": "",
            "fsize": "",
            "scopeIn": "",
            "scopeOut": "",
            "eventService": "True",
            "eventServiceType": 4,
            "payload": json.loads(task["payload"]),
            "nEvents": task["n_events"],
            "eventsPerRange": task["events_per_range"],
            "secondsPerEvent": task["seconds_per_event"],
            "memoryPerRankMB": task["memory_per_rank_mb"],
            "nEventsRemaining": remaining_events,
        }
    spec = json.loads(task["job_spec"])
    ins, outs = spec["input_files"], spec["output_files"]
    out = {
        **common,
        "transformation": spec["transformation"],
        "jobPars": spec["job_parameters"],
        "prodSourceLabel": spec["prod_source_label"],
        "coreCount": spec["cores"],
        "maxCpuCount": spec["walltime"],
        "minRamCount": spec["memory_mb"],
        "maxDiskCount": 0,
        "maxWalltime": spec["walltime"],
        "resource_type": ("MCORE" if spec["cores"] > 1 else "SCORE"),
        "inFiles": _csv(f["lfn"] for f in ins),
        "GUID": _csv(f["guid"] or "NULL" for f in ins),
        "fsize": _csv(f["fsize"] for f in ins),
        "checksum": _csv(f["checksum"] or "NULL" for f in ins),
        "scopeIn": _csv(f["scope"] for f in ins),
        "realDatasetsIn": _csv(dataset for _ in ins),
        "prodDBlocks": _csv(dataset for _ in ins),
        "dispatchDblock": _csv("NULL" for _ in ins),
        "prodDBlockToken": _csv("NULL" for _ in ins),
        "ddmEndPointIn": _csv("" for _ in ins),
        "outFiles": _csv([f["lfn"] for f in outs] + [log_file]),
        "scopeOut": _csv(f["scope"] for f in outs),
        "realDatasets": _csv([dataset] * (len(outs) + 1)),
        "destinationDblock": _csv([dataset] * (len(outs) + 1)),
        "destinationDBlockToken": _csv(["NULL"] * (len(outs) + 1)),
        "fileDestinationSE": _csv(["local"] * (len(outs) + 1)),
        "ddmEndPointOut": _csv([""] * (len(outs) + 1)),
        # sizing hints of this service (not PanDA fields): the harvester sizes jumbo workers with them
        "nEventsRemaining": 1,
        "secondsPerEvent": task["seconds_per_event"],
    }
    if kind == "eventservice":
        out.update(
            {
                "eventService": "True",
                "eventServiceType": 1,
                "nEvents": task["n_events"],
                "nEventsRemaining": remaining_events,
            }
        )
    return out


def task_kind(task: sqlite3.Row | dict) -> str:
    return task["kind"] if "kind" in task.keys() and task["kind"] else "jumbo"  # noqa: SIM118


def remaining_events(conn: sqlite3.Connection, task_id: int) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges WHERE task_id=? AND status IN (?, ?, ?)",
        (task_id, *map(int, RANGE_OPEN)),
    ).fetchone()
    return int(row[0])


def insert_jobs(conn: sqlite3.Connection, task_id: int, count: int, attempt_nr: int, now: float) -> None:
    conn.executemany(
        "INSERT INTO jobs (task_id, status, attempt_nr, created, modified) VALUES (?, ?, ?, ?, ?)",
        [(task_id, JobStatus.ACTIVATED.value, attempt_nr, now, now)] * count,
    )


def dispatch(
    conn: sqlite3.Connection,
    n_jobs: int,
    site: str,
    harvester_id: str | None,
    worker_id: str | None,
    node: str | None,
    now: float,
) -> list[dict]:
    """Claim up to n_jobs activated jobs of active tasks in one UPDATE ... RETURNING."""
    jobs = conn.execute(
        "UPDATE jobs SET status='sent', site=?, harvester_id=?, worker_id=?, node=?, heartbeat=?, modified=? "
        "WHERE panda_id IN (SELECT j.panda_id FROM jobs j JOIN tasks t USING (task_id) "
        "WHERE j.status='activated' AND t.status IN (?, ?) ORDER BY j.panda_id LIMIT ?) RETURNING *",
        (site, harvester_id, worker_id, node, now, now, *ACTIVE_TASK, n_jobs),
    ).fetchall()
    out = []
    for job in sorted(jobs, key=lambda j: j["panda_id"]):
        conn.execute(
            "UPDATE tasks SET status='running', modified=? WHERE task_id=? AND status='defined'", (now, job["task_id"])
        )
        task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (job["task_id"],)).fetchone()
        if task_kind(task) == "ordinary" and not events.claim(conn, task, job["panda_id"], 1, now):
            # its unit of work went to another job meanwhile: this job has nothing to do
            conn.execute("UPDATE jobs SET status='cancelled', modified=? WHERE panda_id=?", (now, job["panda_id"]))
            continue
        record_state(conn, job["panda_id"], "sent", now)
        out.append(render_job(job, task, remaining_events(conn, job["task_id"])))
    return out


def record_state(conn: sqlite3.Connection, panda_id: int, state: str, now: float) -> None:
    """Append [state, time] to the job's state history (a JSON list), unless it repeats the last state."""
    conn.execute(
        "UPDATE jobs SET state_history = json_insert(coalesce(state_history, '[]'), '$[#]', "
        "json_array(?, ?)) WHERE panda_id=? AND coalesce(json_extract(state_history, '$[#-1][0]'), '') != ?",
        (state, now, panda_id, state),
    )


def get_job(conn: sqlite3.Connection, panda_id: Any) -> sqlite3.Row:
    if isinstance(panda_id, bool) or not isinstance(panda_id, int) or not 0 <= panda_id <= limits.BIG:
        raise InvalidInput(f"job id must be an integer PandaID, got {panda_id!r:.80}")
    job = conn.execute("SELECT * FROM jobs WHERE panda_id=?", (panda_id,)).fetchone()
    if job is None:
        raise NotFound(f"job {panda_id} does not exist")
    return job


def _int(update: dict, key: str) -> int:
    value = update.get(key)
    if value in (None, ""):
        return 0
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{key} must be an integer, got {value!r:.80}") from exc
    if isinstance(value, bool) or abs(number) > 2**62:
        raise InvalidInput(f"{key} must be an integer of at most 62 bits, got {value!r:.80}")
    return number


def update(conn: sqlite3.Connection, panda_id: Any, state: Any, fields: dict, now: float) -> str:
    """A pilot's update; returns the command for the pilot ('NULL' or 'tobekilled')."""
    if not isinstance(state, str) or state not in {s.value for s in PILOT_REPORTED}:
        raise InvalidInput(f"job state {state!r:.80} is not one of {sorted(s.value for s in PILOT_REPORTED)}")
    job = get_job(conn, panda_id)
    old = job["status"]
    if not job_transition_allowed(old, state):
        raise IllegalStateChange(f"job {panda_id} is {old}: it cannot become {state}")
    task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (job["task_id"],)).fetchone()
    command = "tobekilled" if job["command"] == "tobekilled" else "NULL"
    if old == state and old in {s.value for s in JOB_TERMINAL}:
        return command  # a repeated final report: nothing to do
    codes = {k: _int(fields, k) for k in ("pilotErrorCode", "exeErrorCode", "transExitCode", "nEvents", "coreCount")}
    pdiag, ediag = limits.diag(fields.get("pilotErrorDiag") or ""), limits.diag(fields.get("exeErrorDiag") or "")
    node = fields.get("node")
    if node is not None and not isinstance(node, str):
        raise InvalidInput(f"node must be a string, got {node!r:.80}")
    node = limits.name("node", node)
    conn.execute(
        "UPDATE jobs SET status=?, heartbeat=?, modified=?, pilot_error_code=?, pilot_error_diag=?, "
        "exe_error_code=?, exe_error_diag=?, trans_exit_code=?, n_events=max(n_events, ?), "
        "core_count=coalesce(nullif(?, 0), core_count), node=coalesce(?, node), "
        "end_time=CASE WHEN ? IN ('finished', 'failed') THEN ? ELSE end_time END WHERE panda_id=?",
        (
            state,
            now,
            now,
            codes["pilotErrorCode"],
            pdiag,
            codes["exeErrorCode"],
            ediag,
            codes["transExitCode"],
            codes["nEvents"],
            codes["coreCount"],
            node,
            state,
            now,
            panda_id,
        ),
    )
    record_pilot_fields(conn, panda_id, fields)
    if old != state:
        record_state(conn, panda_id, state, now)
    if state == JobStatus.FAILED.value and old != state:
        source, code, diag = (
            ("pilot", codes["pilotErrorCode"], pdiag)
            if codes["pilotErrorCode"]
            else ("exe", codes["exeErrorCode"] or codes["transExitCode"], ediag)
        )
        end_job(conn, job, task, True, source, code, diag, now)
    elif state == JobStatus.FINISHED.value and old != state:
        end_job(conn, job, task, False, "", 0, "", now)
    return command


def _time(fields: dict, key: str) -> float | None:
    """An epoch time from a pilot field: seconds (pilot 3.7-3.11) or "%Y-%m-%d %H:%M:%S" UTC (v1, newer pilots)."""
    value = fields.get(key)
    if value in (None, "", "NULL"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        try:
            return datetime.strptime(str(value)[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        except ValueError as exc:
            raise InvalidInput(f"{key} must be epoch seconds or 'YYYY-MM-DD hh:mm:ss', got {value!r:.80}") from exc
    if not 0 <= number < 2**40:
        raise InvalidInput(f"{key} must be epoch seconds, got {value!r:.80}")
    return number


def _text(fields: dict, key: str, size: int) -> str | None:
    value = fields.get(key)
    if value in (None, ""):
        return None
    return str(value)[-size:]  # the tail: a log extract's last lines matter most


def log_file_of(panda_id: int, xml: Any) -> str | None:
    """The job's log tarball as the pilot reports it after stage-out (updateJob `xml`: JSON {lfn: {guid, fsize,
    adler32, surl}}): JSON {lfn, guid, fsize, adler32, surl} of the entry named *.<PandaID>.log.tgz, else None."""
    if not isinstance(xml, str) or not xml.strip().startswith("{"):
        return None
    try:
        files = json.loads(xml)
    except ValueError:
        return None
    for lfn, meta in files.items() if isinstance(files, dict) else []:
        if isinstance(lfn, str) and lfn.endswith(f".{panda_id}.log.tgz") and isinstance(meta, dict):
            entry = {"lfn": lfn[:200], **{k: meta.get(k) for k in ("guid", "fsize", "adler32", "surl")}}
            text = json.dumps(entry, default=str)
            return text if len(text) <= 2000 else None
    return None


def record_pilot_fields(conn: sqlite3.Connection, panda_id: int, fields: dict) -> None:
    """What the PanDA pilot reports besides its state: startTime/endTime, pilotID, pilotTiming, CPU, max RSS,
    the pilot log tail (pilotLog) and the job's log file (from its xml/metadata, if it names one)."""
    cpu = fields.get("cpuConsumptionTime")
    try:
        cpu = None if cpu in (None, "", "NULL") else float(cpu)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"cpuConsumptionTime must be a number, got {cpu!r:.80}") from exc
    if cpu is not None and not (-1 <= cpu < 2**40):
        raise InvalidInput(f"cpuConsumptionTime must be seconds, got {cpu!r:.80}")
    conn.execute(
        "UPDATE jobs SET start_time=coalesce(?, start_time), end_time=coalesce(?, end_time), "
        "pilot_id=coalesce(?, pilot_id), pilot_timing=coalesce(?, pilot_timing), cpu_time=coalesce(?, cpu_time), "
        "cpu_unit=coalesce(?, cpu_unit), max_rss=coalesce(?, max_rss), pilot_log=coalesce(?, pilot_log), "
        "log_file=coalesce(?, log_file) WHERE panda_id=?",
        (
            _time(fields, "startTime"),
            _time(fields, "endTime"),
            _text(fields, "pilotID", 300),
            _text(fields, "pilotTiming", 200),
            cpu,
            _text(fields, "cpuConsumptionUnit", 200),
            _int(fields, "maxRSS") or None,
            _text(fields, "pilotLog", 4096),
            log_file_of(panda_id, fields.get("xml")),
            panda_id,
        ),
    )


def end_job(
    conn: sqlite3.Connection,
    job: sqlite3.Row,
    task: sqlite3.Row,
    failed: bool,
    source: str,
    code: int,
    diag: str,
    now: float,
) -> None:
    """Finish (ordinary job: its unit of work) or release the job's in-flight ranges, count the failure unless it
    is 'system', then top up the task's jobs.

    A job that finishes without having finished any range (an event-service pilot that ran none) returns its
    ranges and counts as a failed attempt too: replacements stop after max_attempts x jobs such attempts
    (settle_task), so such a job is not replaced without bound."""
    counted = False
    if failed:
        _, counted = classify.classify(conn, source, code, diag, now)
    elif task_kind(task) == "ordinary":
        conn.execute(
            "UPDATE ranges SET status=?, modified=? WHERE task_id=? AND panda_id=? AND status IN (1, 2)",
            (int(RangeStatus.FINISHED), now, task["task_id"], job["panda_id"]),
        )
    elif conn.execute(
        "SELECT 1 FROM ranges NOT INDEXED WHERE task_id=? AND panda_id=? AND status=? LIMIT 1",
        (task["task_id"], job["panda_id"], int(RangeStatus.FINISHED)),
    ).fetchone() is None and (
        conn.execute(
            "SELECT 1 FROM ranges INDEXED BY ranges_ready WHERE task_id=? AND status=0 LIMIT 1", (task["task_id"],)
        ).fetchone()
        or conn.execute(
            "SELECT 1 FROM ranges NOT INDEXED WHERE task_id=? AND panda_id=? AND status IN (1, 2) LIMIT 1",
            (task["task_id"], job["panda_id"]),
        ).fetchone()
    ):
        counted = True  # finished with nothing done while work is left: an attempt used up
        code, diag = 0, f"job {job['panda_id']} finished without finishing an event range"
    if counted:
        conn.execute(
            "UPDATE tasks SET job_failures = job_failures + 1, diag=? WHERE task_id=?",
            (
                f"last counted job end: job {job['panda_id']} (attempt {job['attempt_nr']}): "
                f"{source + ' ' if source else ''}{code or ''} {diag}".strip()[:500],
                task["task_id"],
            ),
        )
    events.release_job_ranges(
        conn, task["task_id"], job["panda_id"], task["max_attempts"], counted and failed, code, diag, now
    )
    settle_task(conn, task["task_id"], now, next_attempt=job["attempt_nr"] + 1)


def settle_task(
    conn: sqlite3.Connection, task_id: int, now: float, next_attempt: int | None = None, top_up: bool = True
) -> None:
    """Finish/fail the task when nothing is open; otherwise keep n_jobs jobs alive while failures allow."""
    task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    if task["status"] not in ACTIVE_TASK:
        return
    # index probe first: this runs after every range report, a full count only when the task may be done
    still_open = (
        conn.execute(
            "SELECT 1 FROM ranges INDEXED BY ranges_ready WHERE task_id=? AND status=0 LIMIT 1", (task_id,)
        ).fetchone()
        or conn.execute(
            "SELECT 1 FROM ranges NOT INDEXED WHERE task_id=? AND status IN (1, 2) LIMIT 1", (task_id,)
        ).fetchone()
    )
    if still_open is None:
        counts = dict(
            conn.execute("SELECT status, count(*) FROM ranges WHERE task_id=? GROUP BY status", (task_id,)).fetchall()
        )
        bad = counts.get(int(RangeStatus.FAILED), 0) + counts.get(int(RangeStatus.FATAL), 0)
        _close_task(
            conn, task_id, TaskStatus.FAILED if bad else TaskStatus.FINISHED, f"{bad} ranges failed" if bad else "", now
        )
        return
    if not top_up:
        return
    watched = tuple(JOB_WATCHED) + (JobStatus.ACTIVATED.value,)
    alive = conn.execute(
        f"SELECT count(*) FROM jobs WHERE task_id=? AND status IN ({','.join('?' * len(watched))})", (task_id, *watched)
    ).fetchone()[0]
    if task_kind(task) == "ordinary":  # one job per unit of work that is ready and has no job waiting for it
        ready = conn.execute("SELECT count(*) FROM ranges WHERE task_id=? AND status=0", (task_id,)).fetchone()[0]
        waiting = conn.execute(
            "SELECT count(*) FROM jobs WHERE task_id=? AND status='activated'", (task_id,)
        ).fetchone()[0]
        missing = ready - waiting
    else:
        missing = task["n_jobs"] - alive
    if missing <= 0:
        return
    limit = task["max_attempts"] * task["n_jobs"]
    if task["job_failures"] >= limit:
        if alive == 0:
            _close_task(
                conn,
                task_id,
                TaskStatus.FAILED,
                f"no new job: {task['job_failures']} jobs failed or ended without finishing an event "
                f"range, the task's limit is max_attempts {task['max_attempts']} x {task['n_jobs']} jobs "
                f"= {limit} (`task retry` to go on); {task['diag']}"[:1000],
                now,
            )
        return
    if next_attempt is None:
        next_attempt = (
            1 + conn.execute("SELECT coalesce(max(attempt_nr), 0) FROM jobs WHERE task_id=?", (task_id,)).fetchone()[0]
        )
    insert_jobs(conn, task_id, missing, next_attempt, now)


def _close_task(conn: sqlite3.Connection, task_id: int, status: TaskStatus, diag: str, now: float) -> None:
    conn.execute("UPDATE tasks SET status=?, diag=?, modified=? WHERE task_id=?", (status.value, diag, now, task_id))
    conn.execute(
        "UPDATE jobs SET status='cancelled', modified=? WHERE task_id=? AND status='activated'", (now, task_id)
    )


def lose_heartbeats(conn: sqlite3.Connection, cutoff: float, now: float) -> list[int]:
    """Watchdog step: dispatched jobs silent since before cutoff fail with code 100; their ranges go back."""
    marks = ",".join("?" * len(JOB_WATCHED))
    jobs = conn.execute(
        f"SELECT * FROM jobs WHERE status IN ({marks}) AND heartbeat < ?", (*JOB_WATCHED, cutoff)
    ).fetchall()
    code, diag = LOST_HEARTBEAT
    for job in jobs:
        conn.execute(
            "UPDATE jobs SET status='failed', dispatcher_error_code=?, dispatcher_error_diag=?, "
            "modified=?, end_time=? WHERE panda_id=?",
            (code, diag, now, now, job["panda_id"]),
        )
        record_state(conn, job["panda_id"], "failed", now)
        task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (job["task_id"],)).fetchone()
        end_job(conn, job, task, True, "jobDispatcher", code, diag, now)
    return [j["panda_id"] for j in jobs]
