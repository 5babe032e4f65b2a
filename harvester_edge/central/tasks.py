"""Tasks: submit (split into ranges and jumbo jobs), kill, retry, and read-only views, as DB functions."""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from . import events, jobs
from .errors import IllegalStateChange, NotFound
from .states import RANGE_OPEN, RangeStatus, TaskStatus
from .taskspec import TaskSpec


def submit(conn: sqlite3.Connection, spec: TaskSpec, default_attempts: int, now: float) -> int:
    cur = conn.execute(
        "INSERT INTO tasks (name, payload, n_events, events_per_range, seconds_per_event, memory_per_rank_mb, "
        "max_attempts, n_jobs, guid, status, created, modified, kind, job_spec) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    task_id = cur.lastrowid
    conn.executemany(
        "INSERT INTO ranges (task_id, process_id, start_event, last_event, status) VALUES (?, ?, ?, ?, ?)",
        events.split_rows(task_id, spec.events, spec.events_per_range),
    )
    jobs.insert_jobs(conn, task_id, spec.jobs, 1, now)
    return task_id


def _task(conn: sqlite3.Connection, task_id: int) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"task {task_id} does not exist: see `harvester-edge task list`")
    return row


def kill(conn: sqlite3.Connection, task_id: int, now: float) -> str:
    task = _task(conn, task_id)
    if task["status"] not in jobs.ACTIVE_TASK:
        raise IllegalStateChange(f"task {task_id} is {task['status']}: only defined or running tasks can be killed")
    conn.execute(
        "UPDATE tasks SET status=?, diag='killed by operator', modified=? WHERE task_id=?",
        (TaskStatus.ABORTED.value, now, task_id),
    )
    conn.execute(
        "UPDATE ranges SET status=?, modified=? WHERE task_id=? AND status IN (?, ?, ?)",
        (int(RangeStatus.CANCELLED), now, task_id, *map(int, RANGE_OPEN)),
    )
    conn.execute(
        "UPDATE jobs SET status='cancelled', modified=? WHERE task_id=? AND status='activated'", (now, task_id)
    )
    conn.execute(
        "UPDATE jobs SET command='tobekilled', modified=? WHERE task_id=? AND status NOT IN "
        "('finished', 'failed', 'cancelled')",
        (now, task_id),
    )
    return TaskStatus.ABORTED.value


def retry(conn: sqlite3.Connection, task_id: int, now: float) -> str:
    """Reopen a failed or aborted task: its failed/fatal/cancelled ranges become ready with fresh attempts."""
    task = _task(conn, task_id)
    if task["status"] not in (TaskStatus.FAILED.value, TaskStatus.ABORTED.value):
        raise IllegalStateChange(f"task {task_id} is {task['status']}: only failed or aborted tasks can be retried")
    conn.execute(
        "UPDATE ranges SET status=?, failures=0, panda_id=NULL, modified=? WHERE task_id=? AND status IN (?, ?, ?)",
        (
            int(RangeStatus.READY),
            now,
            task_id,
            int(RangeStatus.FAILED),
            int(RangeStatus.FATAL),
            int(RangeStatus.CANCELLED),
        ),
    )
    conn.execute(
        "UPDATE tasks SET status='running', job_failures=0, diag='', modified=? WHERE task_id=?", (now, task_id)
    )
    jobs.settle_task(conn, task_id, now)
    return conn.execute("SELECT status FROM tasks WHERE task_id=?", (task_id,)).fetchone()[0]


_RANGE_NAMES = {int(s): s.name.lower() for s in RangeStatus}


def summary(conn: sqlite3.Connection, task: sqlite3.Row) -> dict[str, Any]:
    counts = {
        _RANGE_NAMES[s]: n
        for s, n in conn.execute(
            "SELECT status, count(*) FROM ranges WHERE task_id=? GROUP BY status", (task["task_id"],)
        )
    }
    done = conn.execute(
        "SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges WHERE task_id=? AND status=?",
        (task["task_id"], int(RangeStatus.FINISHED)),
    ).fetchone()[0]
    out = {k: task[k] for k in task.keys() if k not in ("payload", "job_spec")}  # noqa: SIM118 (a Row)
    out["payload"] = json.loads(task["payload"])
    out["job"] = json.loads(task["job_spec"]) if task["job_spec"] else None
    out["ranges"] = counts
    out["events_finished"] = done
    return out


def list_tasks(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [summary(conn, t) for t in conn.execute("SELECT * FROM tasks ORDER BY task_id").fetchall()]


def show(conn: sqlite3.Connection, task_id: int) -> dict[str, Any]:
    out = summary(conn, _task(conn, task_id))
    out["jobs"] = [
        dict(j)
        for j in conn.execute(
            "SELECT panda_id, status, attempt_nr, command, site, worker_id, heartbeat, n_events, pilot_error_code, "
            "dispatcher_error_code, dispatcher_error_diag FROM jobs WHERE task_id=? ORDER BY panda_id",
            (task_id,),
        )
    ]
    return out
