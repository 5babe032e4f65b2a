"""Tasks: submit (split into ranges and jumbo jobs), kill, retry, and read-only views, as DB functions."""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from . import events, jobs, scouts
from .errors import IllegalStateChange, InvalidInput, NotFound
from .states import RANGE_OPEN, RangeStatus, TaskStatus
from .store import jobs as job_rows
from .store import ranges
from .store import tasks as task_rows
from .store.conn import Conn
from .taskspec import TaskSpec


def submit(conn: sqlite3.Connection, spec: TaskSpec, default_attempts: int, now: float) -> int:
    task_id = task_rows.insert(
        conn,
        (
            spec.name,
            json.dumps(spec.payload_dict()),
            spec.events,
            spec.events_per_range,
            spec.seconds_per_event,
            spec.memory_per_rank_mb,
            spec.max_attempts or default_attempts,
            spec.jobs,
            str(uuid.uuid4()),
            TaskStatus.DEFINED.value,
            now,
            now,
            spec.kind,
            None if spec.kind == "jumbo" else json.dumps(spec.job_dict()),
        ),
    )
    if task_id is None or spec.events is None or spec.events_per_range is None:  # TaskSpec's validator sets both
        raise RuntimeError(f"task not stored, or its spec lacks events/events_per_range: {spec!r:.200}")
    ranges.insert(conn, events.split_rows(task_id, spec.events, spec.events_per_range))
    n_ranges = -(-spec.events // spec.events_per_range)
    n_scouts = min(spec.scouts, n_ranges) if spec.kind == "jumbo" else 0
    task_rows.set_scouts(conn, task_id, n_scouts, spec.wait_for_scouts, spec.cores)
    jobs.insert_jobs(conn, task_id, spec.jobs, 1, now)
    if spec.priority or spec.share is not None:
        task_rows.set_dispatch(conn, task_id, spec.priority, spec.share, now)
    return task_id


PRIORITY_LIMIT = 1_000_000


def set_dispatch(
    conn: sqlite3.Connection, task_id: int, priority: Any, share: Any, clear_share: bool, now: float
) -> dict[str, Any]:
    """Change a task's priority and/or share (None: keep; clear_share: no share limit) while it is defined or
    running; the task's new {task_id, priority, share}."""
    task = _task(conn, task_id)
    if task["status"] not in jobs.ACTIVE_TASK:
        raise IllegalStateChange(
            f"task {task_id} is {task['status']}: only a defined or running task's priority changes"
        )
    if priority is not None and (
        isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > PRIORITY_LIMIT
    ):
        raise InvalidInput(
            f"priority must be an integer in [-{PRIORITY_LIMIT}, {PRIORITY_LIMIT}], got {priority!r:.80}"
        )
    if share is not None and (
        isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < float(share) <= 1
    ):
        raise InvalidInput(f"share must be a fraction in (0, 1] of the running jobs, got {share!r:.80}")
    new_priority = task["priority"] if priority is None else priority
    new_share = None if clear_share else (task["share"] if share is None else float(share))
    task_rows.set_dispatch(conn, task_id, new_priority, new_share, now)
    return {"task_id": task_id, "priority": new_priority, "share": new_share}


def _task(conn: Conn, task_id: int) -> sqlite3.Row:
    row = task_rows.get(conn, task_id)
    if row is None:
        raise NotFound(f"task {task_id} does not exist: see `harvester-edge task list`")
    return row


def kill(conn: sqlite3.Connection, task_id: int, now: float) -> str:
    task = _task(conn, task_id)
    if task["status"] not in jobs.ACTIVE_TASK:
        raise IllegalStateChange(f"task {task_id} is {task['status']}: only defined or running tasks can be killed")
    task_rows.abort(conn, task_id, TaskStatus.ABORTED.value, now)
    ranges.cancel_open(conn, task_id, int(RangeStatus.CANCELLED), tuple(map(int, RANGE_OPEN)), now)
    job_rows.cancel_activated(conn, task_id, now)
    job_rows.mark_to_kill(conn, task_id, now)
    return TaskStatus.ABORTED.value


def retry(conn: sqlite3.Connection, task_id: int, now: float) -> str:
    """Reopen a failed or aborted task: its failed/fatal/cancelled ranges become ready with fresh attempts."""
    task = _task(conn, task_id)
    if task["status"] not in (TaskStatus.FAILED.value, TaskStatus.ABORTED.value):
        raise IllegalStateChange(f"task {task_id} is {task['status']}: only failed or aborted tasks can be retried")
    ended = (int(RangeStatus.FAILED), int(RangeStatus.FATAL), int(RangeStatus.CANCELLED))
    ranges.reopen(conn, task_id, int(RangeStatus.READY), ended, now)
    task_rows.reopen(conn, task_id, now)
    jobs.settle_task(conn, task_id, now)
    return task_rows.status(conn, task_id)


_RANGE_NAMES = {int(s): s.name.lower() for s in RangeStatus}


def summary(conn: Conn, task: sqlite3.Row) -> dict[str, Any]:
    counts = {_RANGE_NAMES[s]: n for s, n in ranges.count_by_status(conn, task["task_id"]).items()}
    done = ranges.events_in(conn, task["task_id"], int(RangeStatus.FINISHED))
    out = {k: task[k] for k in task.keys() if k not in ("payload", "job_spec")}  # noqa: SIM118 (a sqlite3.Row)
    out["payload"] = json.loads(task["payload"])
    out["job"] = json.loads(task["job_spec"]) if task["job_spec"] else None
    out["ranges"] = counts
    out["events_finished"] = done
    out["estimates"] = scouts.estimates(task)
    return out


def list_tasks(conn: Conn) -> list[dict[str, Any]]:
    return [summary(conn, t) for t in task_rows.all_tasks(conn)]


def show(conn: Conn, task_id: int) -> dict[str, Any]:
    out = summary(conn, _task(conn, task_id))
    out["jobs"] = [dict(j) for j in job_rows.of_task(conn, task_id)]
    return out
