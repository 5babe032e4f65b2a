"""Pure functions around Slurm's command-line tools: argument lists in, parsed records out. No I/O here.

Formats asked for are machine-readable: `squeue -h -o '%i|%T|%r|%S|%e|%j'`, `sacct -X -n -P -o ...` (also with
`-c`, the jobcomp/filetxt variant when there is no slurmdbd), `sbatch --parsable`.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

from harvester_edge.batch import BatchState, WorkerStatus

log = logging.getLogger(__name__)

# Every job state Slurm prints, from
#   https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES  (squeue %T, long form)
#   https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES   (sacct State; "CANCELLED by <uid>" is cut at
#   the first blank before the lookup)
SLURM_STATES: dict[str, BatchState] = {
    "PENDING": BatchState.QUEUED,
    "REQUEUED": BatchState.QUEUED,  # back in the queue after a node failure or a preemption
    "REQUEUE_HOLD": BatchState.QUEUED,  # requeued and held: an admin releases it
    "REQUEUE_FED": BatchState.QUEUED,
    "RESV_DEL_HOLD": BatchState.QUEUED,  # its reservation was deleted: held
    "CONFIGURING": BatchState.RUNNING,  # nodes allocated, booting: counts as started
    "RUNNING": BatchState.RUNNING,
    "COMPLETING": BatchState.RUNNING,  # processes still ending on some nodes
    "RESIZING": BatchState.RUNNING,
    "SIGNALING": BatchState.RUNNING,
    "STAGE_OUT": BatchState.RUNNING,  # burst-buffer stage-out after the script ended
    "SUSPENDED": BatchState.SUSPENDED,
    "STOPPED": BatchState.SUSPENDED,  # SIGSTOP: resources kept
    "COMPLETED": BatchState.FINISHED,
    "FAILED": BatchState.FAILED,
    "NODE_FAIL": BatchState.FAILED,
    "BOOT_FAIL": BatchState.FAILED,
    "OUT_OF_MEMORY": BatchState.FAILED,
    "SPECIAL_EXIT": BatchState.FAILED,  # requeue-with-special-exit: needs a human
    "LAUNCH_FAILED": BatchState.FAILED,
    "CANCELLED": BatchState.CANCELLED,
    "PREEMPTED": BatchState.CANCELLED,  # killed for a higher-priority job (if requeued it shows REQUEUED)
    "REVOKED": BatchState.CANCELLED,  # federation: the sibling ran elsewhere
    "DEADLINE": BatchState.TIMEOUT,  # --deadline reached
    "TIMEOUT": BatchState.TIMEOUT,  # walltime reached: pilots drain before it, so not a failure
}

SQUEUE_FORMAT = "%i|%T|%r|%S|%e|%j"  # the name last: the only field that could hold the separator
SACCT_FIELDS = "jobid,state,exitcode,start,end,jobname"
SACCT_FIELDS_REASON = SACCT_FIELDS + ",reason"  # slurmdbd only; jobcomp has no reason

# sbatch failures, classified. Sources: the messages come from Slurm's src/common/slurm_errno.c (the strings of
# ESLURM_* / SLURM_PROTOCOL_* codes) and src/sbatch/sbatch.c; the "observed" ones were seen on the local cluster
# (scripts/slurm-cluster, Slurm 22.05.8).
SBATCH_TRANSIENT = [
    (r"Unable to contact slurm controller", "SLURMCTLD_COMMUNICATIONS_CONNECTION_ERROR; observed with slurmctld down"),
    (r"Socket timed out", "SLURM_PROTOCOL_SOCKET_IMPL_TIMEOUT"),
    (r"Resource temporarily unavailable", "EAGAIN from the controller (busy, MaxJobCount reached)"),
    (r"temporarily unable to accept job", "sbatch.c retry message / ESLURM_... EAGAIN"),
    (r"Zero Bytes were transmitted", "SLURM_PROTOCOL_SOCKET_ZERO_BYTES_SENT"),
    (r"Communication connection failure", "SLURM_COMMUNICATIONS_CONNECTION_ERROR"),
    (r"Connection refused|Connection reset", "errno from the socket layer"),
    (r"backup controller in standby mode", "ESLURM_IN_STANDBY_MODE (fail-over in progress)"),
    (
        r"Transaction timed out|Slurmctld is busy|Job submit limit|MaxSubmitJobs|QOSMaxSubmitJob|AssocMaxSubmitJob",
        "controller overload and per-user job-count limits (ESLURM_ACCOUNTING_POLICY names 'job submit limit'): "
        "retry later; the caller's retry budget makes a limit that never clears permanent",
    ),
    (r"Job violates accounting/QOS policy", "ESLURM_ACCOUNTING_POLICY: usually a submit-count limit"),
]
SBATCH_PERMANENT = [
    (r"Invalid partition name", "ESLURM_INVALID_PARTITION_NAME; observed"),
    (r"Invalid account", "ESLURM_INVALID_ACCOUNT"),
    (r"Invalid qos", "ESLURM_INVALID_QOS"),
    (r"Requested time limit is invalid", "ESLURM_INVALID_TIME_LIMIT; observed with EnforcePartLimits=ALL"),
    (r"Node count specification invalid", "ESLURM_INVALID_NODE_COUNT; observed"),
    (r"Requested node configuration is not available", "ESLURM_REQUESTED_NODE_CONFIG_UNAVAILABLE"),
    (r"Invalid feature specification", "ESLURM_INVALID_FEATURE (bad --constraint)"),
    (r"Requested reservation is invalid|Invalid reservation", "ESLURM_RESERVATION_INVALID"),
    (r"Access/permission denied|Access denied", "ESLURM_ACCESS_DENIED"),
    (r"Memory required by task is not available", "ESLURM_INVALID_TASK_MEMORY"),
    (r"More processors requested than permitted", "ESLURM_TOO_MANY_REQUESTED_CPUS"),
    (r"Unable to open file|invalid directive|unrecognized option", "sbatch.c: the script or an option is wrong"),
]


@dataclass(frozen=True)
class SqueueRow:
    batch_id: str
    raw_state: str
    reason: str
    start: str
    end: str
    name: str


def format_walltime(seconds: int) -> str:
    """Slurm --time as H:MM:SS (Slurm rounds up to whole minutes)."""
    seconds = max(60, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@functools.lru_cache(maxsize=8192)  # a cycle sees the same few timestamps many times
def parse_time(text: str) -> float | None:
    """Slurm's local ISO time ('2026-11-22T05:00:42') as epoch seconds; None for N/A, Unknown, None, ''."""
    text = text.strip()
    if not text or text in ("N/A", "Unknown", "None", "(null)"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse_exit_code(text: str) -> int | None:
    """'3:0' -> 3; '0:9' (killed by signal 9) -> 137, as a shell reports it."""
    text = text.strip()
    if not text:
        return None
    code, _, sig = text.partition(":")
    try:
        code_i, sig_i = int(code), int(sig or 0)
    except ValueError:
        return None
    return 128 + sig_i if code_i == 0 and sig_i else code_i


def map_state(raw: str, batch_id: str = "") -> BatchState:
    """Slurm state (long form, or 'CANCELLED by 0') -> BatchState; unknown -> UNKNOWN with a warning."""
    key = raw.strip().split(" ", 1)[0].rstrip("+").upper()
    state = SLURM_STATES.get(key)
    if state is None:
        log.warning("job %s: unknown Slurm state %r, reported as UNKNOWN; add it to SLURM_STATES", batch_id, raw)
        return BatchState.UNKNOWN
    return state


def parse_sbatch(stdout: str) -> str | None:
    """`sbatch --parsable` prints '<jobid>' or '<jobid>;<cluster>'; None when there is no id."""
    for line in stdout.splitlines():
        line = line.strip()
        if line:
            job_id = line.split(";", 1)[0]
            return job_id if job_id.replace("_", "").isdigit() else None
    return None


def parse_squeue(stdout: str) -> list[SqueueRow]:
    rows = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 5)
        if len(parts) < 6:
            log.warning("ignored squeue line with %d fields (expected 6): %r", len(parts), line)
            continue
        rows.append(SqueueRow(parts[0].strip(), parts[1].strip(), parts[2].strip(), parts[3], parts[4], parts[5]))
    return rows


def squeue_statuses(stdout: str, wanted: set[str]) -> dict[str, WorkerStatus]:
    """Rows of SQUEUE_FORMAT for the wanted ids (one pass, no intermediate rows: 1,000 jobs per cycle)."""
    out: dict[str, WorkerStatus] = {}
    states = SLURM_STATES
    for line in stdout.splitlines():
        parts = line.split("|", 5)
        if len(parts) < 6:
            if line.strip():
                log.warning("ignored squeue line with %d fields (expected 6): %r", len(parts), line)
            continue
        batch_id = parts[0].strip()
        if batch_id not in wanted:
            continue
        raw = parts[1].strip()
        state = states.get(raw) or map_state(raw, batch_id)
        reason = parts[2].strip()
        if reason in ("None", "(null)"):
            reason = ""
        # squeue has no exit code; COMPLETED means 0 (sacct reports it once the job left squeue)
        out[batch_id] = WorkerStatus(
            batch_id,
            state,
            raw,
            reason,
            0 if state is BatchState.FINISHED else None,
            parse_time(parts[3]),
            parse_time(parts[4]),
        )
    return out


def sacct_statuses(stdout: str, wanted: set[str] | None) -> dict[str, WorkerStatus]:
    """Rows of `sacct -X -n -P -o jobid,state,exitcode,start,end,jobname[,reason]`; the last row of an id wins
    (a requeued job appears once per run)."""
    out: dict[str, WorkerStatus] = {}
    for line in stdout.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        job_id, raw, exit_code, start, end = (p.strip() for p in parts[:5])
        if wanted is not None and job_id not in wanted:
            continue
        reason = parts[6].strip() if len(parts) > 6 else ""
        reason = "" if reason in ("None", "(null)") else reason
        if raw.startswith("CANCELLED by"):
            reason = reason or raw  # who cancelled it
        out[job_id] = WorkerStatus(
            job_id, map_state(raw, job_id), raw, reason, parse_exit_code(exit_code), parse_time(start), parse_time(end)
        )
    return out


def sacct_names(stdout: str, wanted: set[str]) -> dict[str, str]:
    """job_name -> batch_id from sacct rows (jobcomp ignores --name: filter here); the newest id wins."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 6 and parts[5] in wanted:
            found[parts[5]] = parts[0].strip()
    return found


def squeue_names(stdout: str, wanted: set[str]) -> dict[str, str]:
    return {row.name: row.batch_id for row in parse_squeue(stdout) if row.name in wanted}
