"""Every state the harvester keeps, and every legal change between them, in one place.

Jobs are the jumbo jobs fetched from the central service; workers are batch jobs running a pilot; event ranges are
the ranges the harvester holds for its pilots. Agents never write a state column: they call
`harvester_edge.store.rows.transition`, which checks the change against these tables and records it.
"""

from __future__ import annotations

from enum import Enum

from harvester_edge.errors import IllegalTransition


class JobState(str, Enum):
    FETCHED = "fetched"  # acquired from the central service, no worker has started it yet
    RUNNING = "running"  # at least one worker runs or will run its ranges
    FINISHED = "finished"  # the central service has no more ranges for it and every worker ended
    FAILED = "failed"
    CANCELLED = "cancelled"  # the task was killed centrally


JOB_ACTIVE = (JobState.FETCHED, JobState.RUNNING)  # not ended: may still get workers and ranges
JOB_ENDED = (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)  # the terminal states (TERMINAL[JobState])


class WorkerState(str, Enum):
    NEW = "new"  # row and access point exist, not submitted yet (or a transient submit failure, retry later)
    SUBMITTING = "submitting"  # a submit call may be in flight: after a crash, ask the batch system by job name
    QUEUED = "queued"  # the batch system holds it
    RUNNING = "running"
    FINISHED = "finished"  # the batch job ended; TIMEOUT is usually expected for pilots and counts here
    FAILED = "failed"
    CANCELLED = "cancelled"
    MISSING = "missing"  # the batch system forgot it without telling us how it ended


ACTIVE_WORKER_STATES = (WorkerState.SUBMITTING, WorkerState.QUEUED, WorkerState.RUNNING)  # the batch system has it
WORKER_LIVE = (WorkerState.NEW, *ACTIVE_WORKER_STATES)  # not ended (the workers_state index keeps these few apart)
WORKER_WAITING = (WorkerState.NEW, WorkerState.SUBMITTING, WorkerState.QUEUED)  # not running yet
WORKER_ENDED = (WorkerState.FINISHED, WorkerState.FAILED, WorkerState.CANCELLED, WorkerState.MISSING)  # terminal


class RangeState(str, Enum):
    FETCHED = "fetched"  # acquired from the central service, held for a worker (prefetch)
    DISPATCHED = "dispatched"  # written into a worker's access point
    FINISHED = "finished"
    FAILED = "failed"
    RELEASED = "released"  # not done: goes back to the central service to be handed out again


RANGE_HELD = (RangeState.FETCHED, RangeState.DISPATCHED)  # the harvester holds it
RANGE_ENDED = (RangeState.FINISHED, RangeState.FAILED, RangeState.RELEASED)  # terminal


class OutboxState(str, Enum):
    PENDING = "pending"
    SENT = "sent"
    REJECTED = "rejected"  # the central service refused it for good; kept for the operator


OUTBOX_ENDED = (OutboxState.SENT, OutboxState.REJECTED)  # terminal


_J, _W, _R, _O = JobState, WorkerState, RangeState, OutboxState

TRANSITIONS: dict[type[Enum], dict[Enum, frozenset[Enum]]] = {
    JobState: {
        _J.FETCHED: frozenset({_J.RUNNING, _J.CANCELLED, _J.FAILED}),
        _J.RUNNING: frozenset({_J.FINISHED, _J.FAILED, _J.CANCELLED}),
    },
    WorkerState: {
        _W.NEW: frozenset({_W.SUBMITTING, _W.CANCELLED, _W.FAILED}),
        _W.SUBMITTING: frozenset({_W.QUEUED, _W.RUNNING, _W.NEW, _W.FAILED, _W.CANCELLED, _W.FINISHED}),
        _W.QUEUED: frozenset({_W.RUNNING, _W.FINISHED, _W.FAILED, _W.CANCELLED, _W.MISSING}),
        _W.RUNNING: frozenset({_W.FINISHED, _W.FAILED, _W.CANCELLED, _W.MISSING}),
    },
    RangeState: {
        _R.FETCHED: frozenset({_R.DISPATCHED, _R.RELEASED}),
        _R.DISPATCHED: frozenset({_R.FINISHED, _R.FAILED, _R.RELEASED}),
    },
    OutboxState: {
        _O.PENDING: frozenset({_O.SENT, _O.REJECTED}),
    },
}

TERMINAL: dict[type[Enum], frozenset[Enum]] = {
    kind: frozenset(s for s in kind if s not in table) for kind, table in TRANSITIONS.items()
}

# the *_ENDED sets beside the enums are these terminal states, in declaration order (checked at import)
for _kind, _ended in ((_J, JOB_ENDED), (_W, WORKER_ENDED), (_R, RANGE_ENDED), (_O, OUTBOX_ENDED)):
    if frozenset(_ended) != TERMINAL[_kind]:
        raise AssertionError(f"states.py: the ended set of {_kind.__name__} differs from TRANSITIONS")


def is_terminal(state: Enum) -> bool:
    return state in TERMINAL[type(state)]


def check_transition(src: Enum, dst: Enum, what: str = "") -> None:
    """Raise IllegalTransition unless src -> dst is allowed for that kind of object."""
    kind = type(src)
    if type(dst) is not kind:
        raise IllegalTransition(f"{what or kind.__name__}: cannot mix {kind.__name__} and {type(dst).__name__}")
    if dst not in TRANSITIONS[kind].get(src, frozenset()):
        allowed = sorted(s.value for s in TRANSITIONS[kind].get(src, frozenset()))
        raise IllegalTransition(
            f"{what or kind.__name__}: illegal transition {src.value} -> {dst.value}; "
            f"from {src.value} only {', '.join(allowed) or 'nothing (terminal)'} is allowed"
        )
