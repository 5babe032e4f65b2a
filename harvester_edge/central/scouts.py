"""Scouts: the first N ranges of a jumbo task (taskspec `scouts`, default 10) measure it before the rest runs.

With `wait_for_scouts: true` (PanDA's scouting phase) the task's jobs are handed only scout ranges while any is
open (process_id <= n_scouts, claim_upto): `scouting` until none is ready, sent or running; without it the others
run alongside and the estimates change as the scouts report. Each scout that finishes with measurements (the
harvester's range report: `wallTime` seconds and `maxPSS` kB, the pilot's per-range peak PSS of the rank and its
payload processes) adds to the task's estimates: seconds per event = scout wall seconds / scout events, memory
per rank = the highest PSS a scout measured (MB). The memory estimate decides the brokerage (brokerage.py): when
it exceeds the limit of the queue a job was sent to, that job gets no more ranges and the rest of the task goes
to a queue that fits it (a high-memory queue).
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from . import brokerage
from .store import ranges
from .store import tasks as task_rows

MAX_SCOUTS = 1000  # taskspec's limit: a report of a range beyond it is no scout and costs no lookup
DEFAULT_SCOUTS = 10


def seconds_per_event(task: Any) -> float:
    """The task's seconds per event: measured by its scouts once any finished with a time, else declared."""
    events = task["scout_events"] if "scout_events" in task.keys() else 0  # noqa: SIM118 (a sqlite3.Row)
    if events:
        return float(task["scout_seconds"]) / int(events)
    return float(task["seconds_per_event"])


def estimates(task: Any) -> dict[str, Any]:
    """What `task show` and the monitor show: the estimates in use and where they come from."""
    keys = task.keys()
    n, done = (task["n_scouts"], task["scouts_done"]) if "n_scouts" in keys else (0, 0)
    measured_pss = task["scout_pss_mb"] if "scout_pss_mb" in keys else None
    measured_spe = task["scout_events"] if "scout_events" in keys else 0
    return {
        "scouts": n,
        "scouts_done": done,
        "scouting": bool(task["scouting"]) if "scouting" in keys else False,
        "seconds_per_event": round(seconds_per_event(task), 6),
        "seconds_per_event_from": "scouts" if measured_spe else "declared",
        "memory_per_rank_mb": brokerage.task_memory(task),
        "memory_from": "scouts" if measured_pss else "declared",
        "declared_seconds_per_event": task["seconds_per_event"],
        "declared_memory_per_rank_mb": task["memory_per_rank_mb"],
    }


def held_back(job: Any, task: Any) -> bool:
    """A job that got no range through no fault of its own: its task scouts elsewhere, or outgrew its queue."""
    scouting = bool(task["scouting"]) if "scouting" in task.keys() else False  # noqa: SIM118 (a sqlite3.Row)
    return scouting or not brokerage.job_fits(job, task)


def claim_upto(conn: sqlite3.Connection, task: Any) -> int | None:
    """The highest process_id the task's jobs may claim now: n_scouts while scouting, else None (any)."""
    keys = task.keys()
    if "scouting" not in keys or not task["scouting"]:
        return None
    n = int(task["n_scouts"])
    if ranges.any_open_upto(conn, task["task_id"], n):
        return n
    task_rows.end_scouting(conn, task["task_id"])
    return None


def record(conn: sqlite3.Connection, finished: list[tuple[int, int, dict]]) -> None:
    """Finished ranges (task_id, process_id, report) just applied: those that are scouts add their measures."""
    by_task: dict[int, list[tuple[int, dict]]] = {}
    for task_id, process_id, rep in finished:
        if process_id <= MAX_SCOUTS and ("wallTime" in rep or "maxPSS" in rep):
            by_task.setdefault(task_id, []).append((process_id, rep))
    for task_id, reps in by_task.items():
        row = task_rows.scout_fields(conn, task_id)
        if row is None or not row[0]:
            continue
        scouts = [(pid, rep) for pid, rep in reps if pid <= int(row[0])]
        if not scouts:
            continue
        sizes = ranges.sizes(conn, task_id, [pid for pid, _ in scouts])
        events, seconds, pss_kb = 0, 0.0, 0
        for pid, rep in scouts:
            wall = _number(rep.get("wallTime"))
            if wall > 0:
                events += sizes.get(pid, 0)
                seconds += wall
            pss_kb = max(pss_kb, int(_number(rep.get("maxPSS"))))
        task_rows.add_scout_measures(conn, task_id, len(scouts), events, seconds, math.ceil(pss_kb / 1024))


def _number(value: Any) -> float:
    """A measure from a report; anything that is not a sane non-negative number counts as not measured."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if 0 <= number < 2**40 else 0.0
