"""Pure functions around IBM Spectrum LSF's bsub / bjobs / bkill outputs. No I/O here.

Formats (IBM Spectrum LSF 10.1 documentation; tests/batch/data/lsf/README.md names the pages):
- bsub:  "Job <1234> is submitted to queue <normal>."  or  "... to default queue <normal>."
- bjobs -o "<fields>" -json: {"COMMAND": "bjobs", "JOBS": n, "RECORDS": [{"JOBID": "1234", "STAT": "RUN", ...},
  {"JOBID": "99", "ERROR": "Job <99> is not found"}]}
- bkill: "Job <1234> is being terminated", "Job <1234>: Job has already finished",
  "Job <1234>: No matching job found"
"""

from __future__ import annotations

import json
import logging
import re
import time

from harvester_edge.batch import BatchState, WorkerStatus

log = logging.getLogger(__name__)

BJOBS_FIELDS = "jobid stat exit_code exit_reason pend_reason start_time finish_time job_name"

# Job states, https://www.ibm.com/docs/en/spectrum-lsf/10.1.0 "LSF terms and concepts: Job states" and bjobs(1)
# JOB STATUS. EXIT is refined by the termination reason (below).
LSF_STATES: dict[str, BatchState] = {
    "PEND": BatchState.QUEUED,
    "WAIT": BatchState.QUEUED,  # chunk-job member waiting to run
    "PSUSP": BatchState.SUSPENDED,  # held while pending: does not start until resumed
    "RUN": BatchState.RUNNING,
    "PROV": BatchState.RUNNING,  # hosts being provisioned for the job
    "USUSP": BatchState.SUSPENDED,
    "SSUSP": BatchState.SUSPENDED,
    "DONE": BatchState.FINISHED,
    "POST_DONE": BatchState.FINISHED,
    "EXIT": BatchState.FAILED,
    "POST_ERR": BatchState.FAILED,
    "ZOMBI": BatchState.FAILED,  # killed while its host was unreachable
    "UNKWN": BatchState.UNKNOWN,  # mbatchd lost contact with the host: may come back
}

# Termination reasons (IBM doc "Termination reasons displayed by bacct, bhist, and bjobs"): keyword or its text.
EXIT_REASONS: list[tuple[str, BatchState]] = [
    (r"TERM_RUNLIMIT|run ?time limit", BatchState.TIMEOUT),
    (r"TERM_DEADLINE|deadline expires", BatchState.TIMEOUT),
    (
        r"TERM_OWNER|TERM_ADMIN|TERM_FORCE_OWNER|TERM_FORCE_ADMIN|killed by owner|killed by root|"
        r"killed by root or LSF administrator",
        BatchState.CANCELLED,
    ),
    (r"TERM_PREEMPT|after preemption", BatchState.CANCELLED),
    (r"TERM_REQUEUE|requeued", BatchState.QUEUED),
]

# bsub failures. Sources: bsub(1) and lsb_sysmsg strings in the LSF 10.1 documentation (see the data README).
BSUB_TRANSIENT = [
    (
        r"LSF is down|Cannot connect to LSF|Failed to contact LIM|not responding|still trying",
        "mbatchd/LIM unreachable (bsub(1): 'LSF is down. Please wait')",
    ),
    (r"Slave LIM configuration is not ready|master LIM|LIM is down", "LIM restarting"),
    (r"Pending job threshold reached|Too many pending jobs|Maximum number of jobs", "MAX_PEND_JOBS / job limits"),
    (r"Timeout|timed out|Resource temporarily unavailable|Connection refused", "socket layer"),
]
BSUB_PERMANENT = [
    (r"No such queue|Bad queue name", "lsb_sysmsg LSBE_BAD_QUEUE"),
    (r"not a (?:valid|registered) project|no access to the project|Bad project", "-P project not allowed"),
    (r"RUNLIMIT|run limit|exceeds? the queue", "-W over the queue's run limit"),
    (r"User permission denied|not allowed to submit|cannot use the queue|not authorized", "LSBE_PERMISSION"),
    (r"Too many processors requested|Bad argument|Bad resource requirement|syntax error", "bad request"),
    (r"No such reservation|reservation.*not", "-U reservation unknown"),
]

_SUBMITTED = re.compile(r"Job <(\d+(?:\[\d+\])?)> is submitted to (?:default )?queue <([^>]*)>")
_BKILL = re.compile(r"Job <([^>]+)>:?\s*(.*)")


def format_walltime(seconds: int) -> str:
    """bsub -W [hour:]minute, rounded up to whole minutes."""
    minutes = max(1, -(-int(seconds) // 60))
    return f"{minutes // 60}:{minutes % 60:02d}"


def parse_bsub(stdout: str) -> str | None:
    match = _SUBMITTED.search(stdout)
    return match.group(1) if match else None


def parse_time(text: str, now: float | None = None) -> float | None:
    """bjobs times: 'Nov 22 05:00' (optionally with seconds, a year, or an ' E'/' L' estimate mark)."""
    text = re.sub(r"\s+[ELX]$", "", (text or "").strip())
    if not text or text == "-":
        return None
    year = time.localtime(now).tm_year
    for fmt, with_year in (
        ("%b %d %H:%M:%S %Y", True),
        ("%b %d %H:%M %Y", True),
        ("%b %d %H:%M:%S", False),
        ("%b %d %H:%M", False),
    ):
        try:
            parsed = time.strptime(text if with_year else f"{text} {year}", fmt if with_year else f"{fmt} %Y")
            return time.mktime(parsed)
        except ValueError:
            continue
    return None


def map_state(stat: str, exit_reason: str = "", batch_id: str = "") -> BatchState:
    state = LSF_STATES.get(stat.strip().upper())
    if state is None:
        log.warning("job %s: unknown LSF state %r, reported as UNKNOWN; add it to LSF_STATES", batch_id, stat)
        return BatchState.UNKNOWN
    if state is BatchState.FAILED and exit_reason:
        for pattern, refined in EXIT_REASONS:
            if re.search(pattern, exit_reason, re.IGNORECASE):
                return refined
    return state


def parse_bjobs_json(stdout: str) -> tuple[dict[str, dict], dict[str, str]]:
    """(records by job id, errors by job id) from `bjobs -o ... -json`; ValueError when it is not that JSON."""
    data = json.loads(stdout)
    if not isinstance(data, dict) or "RECORDS" not in data:
        raise ValueError("bjobs -json output has no RECORDS")
    records, errors = {}, {}
    for rec in data["RECORDS"]:
        job_id = str(rec.get("JOBID", "")).strip()
        if "ERROR" in rec:
            errors[job_id or rec["ERROR"]] = rec["ERROR"]
        elif job_id:
            records[job_id] = rec
    return records, errors


def bjobs_statuses(records: dict[str, dict], wanted: set[str] | None = None) -> dict[str, WorkerStatus]:
    out = {}
    for job_id, rec in records.items():
        if wanted is not None and job_id not in wanted:
            continue
        stat = str(rec.get("STAT", ""))
        exit_reason = str(rec.get("EXIT_REASON", "") or "")
        pend_reason = str(rec.get("PEND_REASON", "") or "")
        exit_text = str(rec.get("EXIT_CODE", "") or "").strip()
        state = map_state(stat, exit_reason, job_id)
        exit_code = (
            int(exit_text) if exit_text.lstrip("-").isdigit() else (0 if stat in ("DONE", "POST_DONE") else None)
        )
        reason = exit_reason or pend_reason
        out[job_id] = WorkerStatus(
            job_id,
            state,
            stat,
            reason.strip(),
            exit_code,
            parse_time(str(rec.get("START_TIME", ""))),
            parse_time(str(rec.get("FINISH_TIME", ""))),
        )
    return out


def parse_bkill(text: str, ids: list[str]) -> dict[str, str | None]:
    """id -> None (terminating, or already finished / unknown: nothing left to do) or the error message."""
    out: dict[str, str | None] = {i: None for i in ids}
    for line in text.splitlines():
        match = _BKILL.search(line)
        if not match or match.group(1) not in out:
            continue
        job_id, message = match.group(1), match.group(2).strip()
        if re.search(r"being terminated|already finished|No matching job|being signaled", message, re.IGNORECASE):
            continue
        out[job_id] = message or line.strip()
    return out
