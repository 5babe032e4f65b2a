"""Task, job and event-range states of the central service and their legal transitions, in one place."""

from __future__ import annotations

from enum import Enum, IntEnum


class TaskStatus(str, Enum):
    DEFINED = "defined"  # split into ranges and jobs, nothing dispatched yet
    RUNNING = "running"  # at least one job dispatched
    FINISHED = "finished"  # every range finished
    FAILED = "failed"  # some range used up its attempts (or jobs kept failing); retry reopens it
    ABORTED = "aborted"  # killed by an operator; retry reopens it


TASK_TERMINAL = {TaskStatus.FINISHED, TaskStatus.FAILED, TaskStatus.ABORTED}


class JobStatus(str, Enum):
    ACTIVATED = "activated"  # waiting for a pilot
    SENT = "sent"  # handed to a pilot (getJob / acquire_jobs)
    STARTING = "starting"
    RUNNING = "running"
    HOLDING = "holding"
    TRANSFERRING = "transferring"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_TERMINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED}
# States a pilot may report in updateJob; anything else is invalid input.
PILOT_REPORTED = {
    JobStatus.STARTING,
    JobStatus.RUNNING,
    JobStatus.HOLDING,
    JobStatus.TRANSFERRING,
    JobStatus.FINISHED,
    JobStatus.FAILED,
}
_ACTIVE = {JobStatus.SENT, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.HOLDING, JobStatus.TRANSFERRING}
JOB_TRANSITIONS: dict[JobStatus, set[JobStatus]] = {
    JobStatus.ACTIVATED: {JobStatus.SENT, JobStatus.CANCELLED},
    **{s: (PILOT_REPORTED | {JobStatus.CANCELLED}) for s in _ACTIVE},
    JobStatus.FINISHED: set(),
    JobStatus.FAILED: set(),
    JobStatus.CANCELLED: set(),
}
# Jobs the watchdog watches: dispatched and not yet done.
JOB_WATCHED = {s.value for s in _ACTIVE}


def job_transition_allowed(old: str, new: str) -> bool:
    """True for a legal change; repeating the current state (a retried request) is legal and a no-op."""
    if old == new:
        return True
    try:
        return JobStatus(new) in JOB_TRANSITIONS[JobStatus(old)]
    except ValueError:
        return False


class RangeStatus(IntEnum):
    """Server-side event statuses, numbered as in PanDA (pandaserver/taskbuffer/EventServiceUtils.py)."""

    READY = 0
    SENT = 1
    RUNNING = 2
    FINISHED = 3
    CANCELLED = 4
    DISCARDED = 5
    DONE = 6
    FAILED = 7
    FATAL = 8
    MERGED = 9
    CORRUPTED = 10


RANGE_IN_FLIGHT = (RangeStatus.SENT, RangeStatus.RUNNING)
RANGE_OPEN = (RangeStatus.READY, RangeStatus.SENT, RangeStatus.RUNNING)
# What a pilot may report per range; running/transferring are accepted but change nothing stored.
RANGE_REPORTED = {
    "running": None,
    "transferring": None,
    "finished": RangeStatus.FINISHED,
    "failed": RangeStatus.FAILED,
    "fatal": RangeStatus.FATAL,
}
