"""Jumbo jobs (eventService 4): dispatch, pilot updates, replacement jobs and the task's end, as write functions."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from . import classify, events, limits
from .errors import IllegalStateChange, InvalidInput, NotFound
from .states import (JOB_TERMINAL, JOB_WATCHED, PILOT_REPORTED, RANGE_OPEN, JobStatus, RangeStatus,
                     TaskStatus, job_transition_allowed)

ACTIVE_TASK = (TaskStatus.DEFINED.value, TaskStatus.RUNNING.value)
LOST_HEARTBEAT = (100, "lost heartbeat")


def render_job(job: sqlite3.Row | dict, task: sqlite3.Row | dict, remaining_events: int) -> dict[str, Any]:
    """The job description a pilot receives (panda-protocol.md), plus the payload spec and sizing hints."""
    pid, name = job["panda_id"], task["name"]
    return {
        "PandaID": pid, "taskID": task["task_id"], "jobsetID": task["task_id"], "jobName": f"{name}.{pid}",
        "transformation": "jumbo", "jobPars": json.dumps(json.loads(task["payload"])),
        "prodSourceLabel": "managed", "attemptNr": job["attempt_nr"], "coreCount": 1,
        "maxCpuCount": 0, "minRamCount": task["memory_per_rank_mb"], "maxDiskCount": 0,
        "maxWalltime": 0, "resource_type": "MCORE", "currentPriority": 1000,
        "inFiles": "", "outFiles": "", "GUID": "", "checksum": "", "fsize": "", "scopeIn": "", "scopeOut": "",
        "logFile": f"{name}.{pid}.log.tgz", "logGUID": "", "eventService": "True", "eventServiceType": 4,
        "payload": json.loads(task["payload"]), "nEvents": task["n_events"],
        "eventsPerRange": task["events_per_range"], "secondsPerEvent": task["seconds_per_event"],
        "memoryPerRankMB": task["memory_per_rank_mb"], "nEventsRemaining": remaining_events,
    }


def remaining_events(conn: sqlite3.Connection, task_id: int) -> int:
    row = conn.execute("SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges "
                       "WHERE task_id=? AND status IN (?, ?, ?)", (task_id, *map(int, RANGE_OPEN))).fetchone()
    return int(row[0])


def insert_jobs(conn: sqlite3.Connection, task_id: int, count: int, attempt_nr: int, now: float) -> None:
    conn.executemany("INSERT INTO jobs (task_id, status, attempt_nr, created, modified) VALUES (?, ?, ?, ?, ?)",
                     [(task_id, JobStatus.ACTIVATED.value, attempt_nr, now, now)] * count)


def dispatch(conn: sqlite3.Connection, n_jobs: int, site: str, harvester_id: str | None, worker_id: str | None,
             node: str | None, now: float) -> list[dict]:
    """Claim up to n_jobs activated jobs of active tasks in one UPDATE ... RETURNING."""
    jobs = conn.execute(
        "UPDATE jobs SET status='sent', site=?, harvester_id=?, worker_id=?, node=?, heartbeat=?, modified=? "
        "WHERE panda_id IN (SELECT j.panda_id FROM jobs j JOIN tasks t USING (task_id) "
        "WHERE j.status='activated' AND t.status IN (?, ?) ORDER BY j.panda_id LIMIT ?) RETURNING *",
        (site, harvester_id, worker_id, node, now, now, *ACTIVE_TASK, n_jobs)).fetchall()
    out = []
    for job in sorted(jobs, key=lambda j: j["panda_id"]):
        conn.execute("UPDATE tasks SET status='running', modified=? WHERE task_id=? AND status='defined'",
                     (now, job["task_id"]))
        task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (job["task_id"],)).fetchone()
        out.append(render_job(job, task, remaining_events(conn, job["task_id"])))
    return out


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
    codes = {k: _int(fields, k) for k in ("pilotErrorCode", "exeErrorCode", "transExitCode", "nEvents",
                                           "coreCount")}
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
        (state, now, now, codes["pilotErrorCode"], pdiag, codes["exeErrorCode"], ediag, codes["transExitCode"],
         codes["nEvents"], codes["coreCount"], node, state, now, panda_id))
    if state == JobStatus.FAILED.value and old != state:
        source, code, diag = (("pilot", codes["pilotErrorCode"], pdiag) if codes["pilotErrorCode"]
                              else ("exe", codes["exeErrorCode"] or codes["transExitCode"], ediag))
        end_job(conn, job, task, True, source, code, diag, now)
    elif state == JobStatus.FINISHED.value and old != state:
        end_job(conn, job, task, False, "", 0, "", now)
    return command


def end_job(conn: sqlite3.Connection, job: sqlite3.Row, task: sqlite3.Row, failed: bool, source: str,
            code: int, diag: str, now: float) -> None:
    """Release the job's in-flight ranges, count the failure unless it is 'system', top up the task's jobs."""
    counted = False
    if failed:
        _, counted = classify.classify(conn, source, code, diag, now)
        if counted:
            conn.execute("UPDATE tasks SET job_failures = job_failures + 1 WHERE task_id=?", (task["task_id"],))
    events.release_job_ranges(conn, task["task_id"], job["panda_id"], task["max_attempts"], counted, code, diag, now)
    settle_task(conn, task["task_id"], now, next_attempt=job["attempt_nr"] + 1)


def settle_task(conn: sqlite3.Connection, task_id: int, now: float, next_attempt: int | None = None,
                top_up: bool = True) -> None:
    """Finish/fail the task when nothing is open; otherwise keep n_jobs jobs alive while failures allow."""
    task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    if task["status"] not in ACTIVE_TASK:
        return
    # index probe first: this runs after every range report, a full count only when the task may be done
    still_open = (conn.execute("SELECT 1 FROM ranges INDEXED BY ranges_ready WHERE task_id=? AND status=0 "
                               "LIMIT 1", (task_id,)).fetchone()
                  or conn.execute("SELECT 1 FROM ranges NOT INDEXED WHERE task_id=? AND status IN (1, 2) LIMIT 1",
                                  (task_id,)).fetchone())
    if still_open is None:
        counts = dict(conn.execute("SELECT status, count(*) FROM ranges WHERE task_id=? GROUP BY status",
                                   (task_id,)).fetchall())
        bad = counts.get(int(RangeStatus.FAILED), 0) + counts.get(int(RangeStatus.FATAL), 0)
        _close_task(conn, task_id, TaskStatus.FAILED if bad else TaskStatus.FINISHED,
                    f"{bad} ranges failed" if bad else "", now)
        return
    if not top_up:
        return
    watched = tuple(JOB_WATCHED) + (JobStatus.ACTIVATED.value,)
    alive = conn.execute(f"SELECT count(*) FROM jobs WHERE task_id=? AND status IN "
                         f"({','.join('?' * len(watched))})", (task_id, *watched)).fetchone()[0]
    missing = task["n_jobs"] - alive
    if missing <= 0:
        return
    if task["job_failures"] >= task["max_attempts"] * task["n_jobs"]:
        if alive == 0:
            _close_task(conn, task_id, TaskStatus.FAILED, f"{task['job_failures']} job failures", now)
        return
    if next_attempt is None:
        next_attempt = 1 + conn.execute("SELECT coalesce(max(attempt_nr), 0) FROM jobs WHERE task_id=?",
                                        (task_id,)).fetchone()[0]
    insert_jobs(conn, task_id, missing, next_attempt, now)


def _close_task(conn: sqlite3.Connection, task_id: int, status: TaskStatus, diag: str, now: float) -> None:
    conn.execute("UPDATE tasks SET status=?, diag=?, modified=? WHERE task_id=?", (status.value, diag, now, task_id))
    conn.execute("UPDATE jobs SET status='cancelled', modified=? WHERE task_id=? AND status='activated'",
                 (now, task_id))


def lose_heartbeats(conn: sqlite3.Connection, cutoff: float, now: float) -> list[int]:
    """Watchdog step: dispatched jobs silent since before cutoff fail with code 100; their ranges go back."""
    marks = ",".join("?" * len(JOB_WATCHED))
    jobs = conn.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) AND heartbeat < ?",
                        (*JOB_WATCHED, cutoff)).fetchall()
    code, diag = LOST_HEARTBEAT
    for job in jobs:
        conn.execute("UPDATE jobs SET status='failed', dispatcher_error_code=?, dispatcher_error_diag=?, "
                     "modified=?, end_time=? WHERE panda_id=?", (code, diag, now, now, job["panda_id"]))
        task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (job["task_id"],)).fetchone()
        end_job(conn, job, task, True, "jobDispatcher", code, diag, now)
    return [j["panda_id"] for j in jobs]
