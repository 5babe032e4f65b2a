"""Jumbo jobs (eventService 4): dispatch, pilot updates, replacement jobs and the task's end, as write functions."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from harvester_edge.codes import DispatcherError

from . import brokerage, classify, dispatch_order, events, limits, scouts
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
from .store import jobs as job_rows
from .store import ranges
from .store import tasks as task_rows
from .store.pg import is_pg

ACTIVE_TASK = (TaskStatus.DEFINED.value, TaskStatus.RUNNING.value)
LOST_HEARTBEAT = (DispatcherError.LOST_HEARTBEAT, DispatcherError.MEANING[DispatcherError.LOST_HEARTBEAT])


def _csv(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


def render_job(job: sqlite3.Row | dict, task: sqlite3.Row | dict, remaining_events: int) -> dict[str, Any]:
    """The job description a pilot receives: the fields the real server's JobSpec gives a pilot for the task's
    kind (pandaserver/taskbuffer/JobSpec.py); event-service flags only on event-service jobs."""
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
            "minRamCount": brokerage.task_memory(task),
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
            "secondsPerEvent": scouts.seconds_per_event(task),
            "memoryPerRankMB": brokerage.task_memory(task),
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
    # sqlite3.Row has keys() but no get() and iterates over its values: keys() is needed (SIM118 does not apply)
    return task["kind"] if "kind" in task.keys() and task["kind"] else "jumbo"  # noqa: SIM118


def remaining_events(conn: sqlite3.Connection, task_id: int) -> int:
    return ranges.open_events(conn, task_id, tuple(map(int, RANGE_OPEN)))


def insert_jobs(conn: sqlite3.Connection, task_id: int, count: int, attempt_nr: int, now: float) -> None:
    job_rows.insert(conn, task_id, count, JobStatus.ACTIVATED.value, attempt_nr, now)


def dispatch(
    conn: sqlite3.Connection,
    n_jobs: int,
    site: str,
    harvester_id: str | None,
    worker_id: str | None,
    node: str | None,
    now: float,
    resources: brokerage.Resources = brokerage.NO_LIMITS,
) -> list[dict]:
    """Claim up to n_jobs activated jobs of active tasks that fit the asking queue's resources (brokerage.py), in
    the order of the tasks' priorities and shares (dispatch_order.py), each batch in one UPDATE ... RETURNING."""
    jobs = dispatch_order.claim(
        conn,
        n_jobs,
        site,
        harvester_id,
        worker_id,
        node,
        ACTIVE_TASK,
        now,
        brokerage.fit_sql(resources),
        (resources.computing_element, resources.memory),
    )
    out = []
    for job in sorted(jobs, key=lambda j: j["panda_id"]):
        task_rows.start(conn, job["task_id"], now)
        task = task_rows.of_job(conn, job["task_id"])
        if task_kind(task) == "ordinary" and not events.claim(conn, task, job["panda_id"], 1, now):
            # its unit of work went to another job meanwhile: this job has nothing to do
            job_rows.cancel(conn, job["panda_id"], now)
            continue
        record_state(conn, job["panda_id"], "sent", now)
        out.append(render_job(job, task, remaining_events(conn, job["task_id"])))
    return out


def record_state(conn: sqlite3.Connection, panda_id: int, state: str, now: float) -> None:
    """Append [state, time] to the job's state history (a JSON list), unless it repeats the last state."""
    job_rows.append_state(conn, panda_id, state, now)


def get_job(conn: sqlite3.Connection, panda_id: Any, lock: bool = False) -> sqlite3.Row:
    """The job (NotFound if none); lock: to change it (PostgreSQL: FOR UPDATE NOWAIT, see store/jobs.py)."""
    if isinstance(panda_id, bool) or not isinstance(panda_id, int) or not 0 <= panda_id <= limits.BIG:
        raise InvalidInput(f"job id must be an integer PandaID, got {panda_id!r:.80}")
    job = job_rows.get_for_update(conn, panda_id) if lock else job_rows.get(conn, panda_id)
    if job is None:
        raise NotFound(f"job {panda_id} does not exist")
    return job


def get_job_and_task(conn: sqlite3.Connection, panda_id: Any, lock: bool = False) -> tuple[sqlite3.Row, sqlite3.Row]:
    """get_job and the job's task, read together (PostgreSQL: one round trip, see store/jobs.get_with_task)."""
    if isinstance(panda_id, bool) or not isinstance(panda_id, int) or not 0 <= panda_id <= limits.BIG:
        raise InvalidInput(f"job id must be an integer PandaID, got {panda_id!r:.80}")
    job, task = job_rows.get_with_task(conn, panda_id, lock)
    if job is None or task is None:
        raise NotFound(f"job {panda_id} does not exist")
    return job, task


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


def update(conn: sqlite3.Connection, panda_id: Any, state: Any, fields: dict, now: float, last: bool = False) -> Any:
    """A pilot's update; returns the command for the pilot ('NULL' or 'tobekilled'). last: the update is the
    whole write (a pilot's update_job, not an entry of a bulk), so on PostgreSQL a heartbeat's answer may be a
    pg.Later, given by the writer once its batch committed."""
    if not isinstance(state, str) or state not in {s.value for s in PILOT_REPORTED}:
        raise InvalidInput(f"job state {state!r:.80} is not one of {sorted(s.value for s in PILOT_REPORTED)}")
    command = _same_state(conn, panda_id, state, fields, now, last) if is_pg(conn) else None
    if command is not None:
        return command
    job, task = get_job_and_task(conn, panda_id, lock=True)
    old = job["status"]
    if not job_transition_allowed(old, state):
        raise IllegalStateChange(f"job {panda_id} is {old}: it cannot become {state}")
    command = "tobekilled" if job["command"] == "tobekilled" else "NULL"
    if old == state and old in {s.value for s in JOB_TERMINAL}:
        return command  # a repeated final report: nothing to do
    codes, pdiag, ediag, node = _report_fields(fields)
    job_rows.report(conn, panda_id, state, codes, pdiag, ediag, node, now)
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


def _report_fields(fields: dict) -> tuple[dict[str, int], str, str, str | None]:
    """(codes, pilot diag, exe diag, node) of a pilot's update, checked."""
    codes = {k: _int(fields, k) for k in ("pilotErrorCode", "exeErrorCode", "transExitCode", "nEvents", "coreCount")}
    pdiag, ediag = limits.diag(fields.get("pilotErrorDiag") or ""), limits.diag(fields.get("exeErrorDiag") or "")
    node = fields.get("node")
    if node is not None and not isinstance(node, str):
        raise InvalidInput(f"node must be a string, got {node!r:.80}")
    return codes, pdiag, ediag, limits.name("node", node)


_TERMINAL = frozenset(s.value for s in JOB_TERMINAL)


def _same_state(conn: sqlite3.Connection, panda_id: Any, state: str, fields: dict, now: float, last: bool) -> Any:
    """PostgreSQL: the update of a job already in `state` (not a final one: a pilot's heartbeat) in one statement
    (store/jobs.py report_same_state); the command for the pilot (with `last`, maybe a pg.Later the writer
    answers after its commit), or None: the general path decides (another state, no such job, a field it
    refuses)."""
    if state in _TERMINAL or isinstance(panda_id, bool) or not isinstance(panda_id, int):
        return None
    if not 0 <= panda_id <= limits.BIG:
        return None
    try:
        codes, pdiag, ediag, node = _report_fields(fields)
    except InvalidInput:
        return None  # the general path raises it, after the checks that come first there
    pilot_fields = not _PILOT_FIELDS.isdisjoint(fields)
    command = job_rows.report_same_state(
        conn, panda_id, state, codes, pdiag, ediag, node, now, _command_of, last=last and not pilot_fields
    )
    if command is not None and pilot_fields:
        record_pilot_fields(conn, panda_id, fields)
    return command


def _command_of(row: Any) -> str:
    return "tobekilled" if row[0] == "tobekilled" else "NULL"


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


_PILOT_FIELDS = frozenset(
    {
        "startTime",
        "endTime",
        "pilotID",
        "pilotTiming",
        "cpuConsumptionTime",
        "cpuConsumptionUnit",
        "maxRSS",
        "pilotLog",
        "xml",
    }
)


def record_pilot_fields(conn: sqlite3.Connection, panda_id: int, fields: dict) -> None:
    """What the PanDA pilot reports besides its state: startTime/endTime, pilotID, pilotTiming, CPU, max RSS,
    the pilot log tail (pilotLog) and the job's log file (from its xml/metadata, if it names one)."""
    if _PILOT_FIELDS.isdisjoint(fields):
        return  # a heartbeat with none of them (the usual one): nothing to parse or write
    cpu = fields.get("cpuConsumptionTime")
    try:
        cpu = None if cpu in (None, "", "NULL") else float(cpu)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"cpuConsumptionTime must be a number, got {cpu!r:.80}") from exc
    if cpu is not None and not (-1 <= cpu < 2**40):
        raise InvalidInput(f"cpuConsumptionTime must be seconds, got {cpu!r:.80}")
    job_rows.pilot_fields(
        conn,
        panda_id,
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
    counted = fatal = False
    if failed:
        klass, counted = classify.classify(conn, source, code, diag, now)
        fatal = klass == classify.FATAL  # never retried: the job's ranges end as fatal
    elif task_kind(task) == "ordinary":
        ranges.finish_job_units(conn, task["task_id"], job["panda_id"], int(RangeStatus.FINISHED), now)
    elif (
        not ranges.job_has(conn, task["task_id"], job["panda_id"], int(RangeStatus.FINISHED))
        and (ranges.any_ready(conn, task["task_id"]) or ranges.job_in_flight(conn, task["task_id"], job["panda_id"]))
        and not scouts.held_back(job, task)  # no range for it while scouting, or its queue no longer fits: no fault
    ):
        counted = True  # finished with nothing done while work is left: an attempt used up
        code, diag = 0, f"job {job['panda_id']} finished without finishing an event range"
    if counted:
        task_rows.count_failure(
            conn,
            task["task_id"],
            f"last counted job end: job {job['panda_id']} (attempt {job['attempt_nr']}): "
            f"{source + ' ' if source else ''}{code or ''} {diag}".strip()[:500],
        )
    events.release_job_ranges(
        conn, task["task_id"], job["panda_id"], task["max_attempts"], counted and failed, code, diag, now, fatal
    )
    settle_task(conn, task["task_id"], now, next_attempt=job["attempt_nr"] + 1)


def settle_task(
    conn: sqlite3.Connection, task_id: int, now: float, next_attempt: int | None = None, top_up: bool = True
) -> None:
    """Finish/fail the task when nothing is open; otherwise keep n_jobs jobs alive while failures allow."""
    if not top_up and ranges.any_ready(conn, task_id):
        return  # after range reports (most of them): ranges left to claim, nothing to settle; no task read
    task = task_rows.of_job(conn, task_id)
    if task["status"] not in ACTIVE_TASK:
        return
    # index probe first: this runs after every range report, a full count only when the task may be done
    ready = ranges.any_ready(conn, task_id)
    if not ready:  # the task's tail: settle one process at a time (PostgreSQL; see task_rows.lock)
        task = task_rows.lock(conn, task_id)
        if task["status"] not in ACTIVE_TASK:
            return
    still_open = ready or ranges.any_in_flight(conn, task_id)
    if not still_open:
        counts = ranges.count_by_status(conn, task_id)
        bad = counts.get(int(RangeStatus.FAILED), 0) + counts.get(int(RangeStatus.FATAL), 0)
        _close_task(
            conn, task_id, TaskStatus.FAILED if bad else TaskStatus.FINISHED, f"{bad} ranges failed" if bad else "", now
        )
        return
    if not top_up:
        return
    watched = tuple(JOB_WATCHED) + (JobStatus.ACTIVATED.value,)
    alive = job_rows.count_in(conn, task_id, watched)
    if task_kind(task) == "ordinary":  # one job per unit of work that is ready and has no job waiting for it
        n_ready = ranges.count_ready(conn, task_id)
        waiting = job_rows.count_activated(conn, task_id)
        missing = n_ready - waiting
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
        next_attempt = 1 + job_rows.last_attempt(conn, task_id)
    insert_jobs(conn, task_id, missing, next_attempt, now)


def _close_task(conn: sqlite3.Connection, task_id: int, status: TaskStatus, diag: str, now: float) -> None:
    task_rows.close(conn, task_id, status.value, diag, now)
    job_rows.cancel_activated(conn, task_id, now)


def lose_heartbeats(conn: sqlite3.Connection, cutoff: float, now: float) -> list[int]:
    """Watchdog step: dispatched jobs silent since before cutoff fail with code 100; their ranges go back."""
    jobs = job_rows.silent(conn, JOB_WATCHED, cutoff)
    code, diag = LOST_HEARTBEAT
    for job in jobs:
        job_rows.fail_dispatcher(conn, job["panda_id"], code, diag, now)
        record_state(conn, job["panda_id"], "failed", now)
        task = task_rows.of_job(conn, job["task_id"])
        end_job(conn, job, task, True, "jobDispatcher", code, diag, now)
    return [j["panda_id"] for j in jobs]
