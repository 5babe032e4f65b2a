"""Which task's activated jobs a getJob/acquire_jobs call hands out first: task priority and share (issue 17).

- priority (tasks.priority, default 0): a higher priority task's activated jobs go out before a lower one's;
  equal priorities keep the service's order of old (the oldest activated job first).
- share (tasks.share, a fraction in (0, 1], default none): the task may hold at most that fraction of the
  service's running jobs (jobs sent, starting or running: each is one worker's pilot) while another task
  has activated jobs waiting. Work-conserving: when only tasks at or over their share have work, they get it
  (a share never leaves a worker idle).

The share is applied HERE, by the central service when a harvester's submitter asks it for jobs for its workers:
the service is the one place that sees every task's running jobs; the harvester sizes and submits workers for
the jobs it gets. So a task over its share gets no new worker while others wait, and its running workers end
on their own (no kill).

The plan is read before the claim; the claim itself (store/jobs.py claim_activated, one task at a time)
re-checks each job's state, so a plan made stale by a concurrent acquire only hands out fewer jobs, never one
twice; slots the plan could not fill go to the oldest activated jobs of any task.
"""

from __future__ import annotations

import sqlite3

from .states import JOB_WATCHED
from .store import jobs as job_rows

_EPSILON = 1e-9


def plan(
    conn: sqlite3.Connection, n_jobs: int, active_task: tuple[str, str], fit: tuple[str, tuple] = ("", ())
) -> list[tuple[int, int]] | None:
    """(task_id, count) in the order to claim them, or None when the plain order (oldest job first) is the
    same: at most one task waits, or every waiting task has the same priority and no share. fit: only the tasks
    whose jobs fit the asking queue (brokerage.fit_sql) are planned."""
    waiting = job_rows.waiting_by_task(conn, active_task, fit)
    if len(waiting) <= 1:
        return None
    if len({row[1] for row in waiting}) == 1 and all(row[2] is None or row[2] >= 1 for row in waiting):
        return None
    order = sorted(waiting, key=lambda row: (-row[1], row[3]))  # priority, then the oldest activated job
    running = job_rows.running_by_task(conn, tuple(sorted(JOB_WATCHED)))
    total = sum(running.values())
    left = {row[0]: row[4] for row in order}
    given: dict[int, int] = {}
    picks: list[int] = []
    for _ in range(n_jobs):
        pick = None
        for task_id, _priority, share, *_ in order:
            if left[task_id] <= 0:
                continue
            mine = running.get(task_id, 0) + given.get(task_id, 0) + 1
            if share is None or mine <= share * (total + len(picks) + 1) + _EPSILON:
                pick = task_id
                break
        if pick is None:  # every task with work is at its share: the highest priority one gets it anyway
            pick = next((row[0] for row in order if left[row[0]] > 0), None)
            if pick is None:
                break
        left[pick] -= 1
        given[pick] = given.get(pick, 0) + 1
        picks.append(pick)
    out: list[tuple[int, int]] = []
    for task_id in picks:  # consecutive picks of one task become one claim
        if out and out[-1][0] == task_id:
            out[-1] = (task_id, out[-1][1] + 1)
        else:
            out.append((task_id, 1))
    return out


def claim(
    conn: sqlite3.Connection,
    n_jobs: int,
    site: str,
    harvester_id: str | None,
    worker_id: str | None,
    node: str | None,
    active_task: tuple[str, str],
    now: float,
    fit: tuple[str, tuple] = ("", ()),
    placed: tuple[str | None, int | None] = (None, None),
) -> list[sqlite3.Row]:
    """Up to n_jobs activated jobs that fit the asking queue (fit, placed: brokerage.py) become sent, in the order
    of plan() (store/jobs.py claim_activated)."""

    def take(count: int, task_id: int | None = None) -> list[sqlite3.Row]:
        return job_rows.claim_activated(
            conn, count, site, harvester_id, worker_id, node, active_task, now, task_id, fit, placed
        )

    steps = plan(conn, n_jobs, active_task, fit)
    if steps is None:
        return take(n_jobs)
    out: list[sqlite3.Row] = []
    for task_id, count in steps:
        out += take(count, task_id)
    if len(out) < n_jobs:  # a concurrent acquire took some of the planned jobs
        out += take(n_jobs - len(out))
    return out
