"""Brokerage by resources: which jobs fit the queue that asks (PanDA's getJob `mem` against a job's minRamCount).

A queue's harvester sends with each job request what one rank of that queue offers: `memory` (MB at most),
`memory_min` (MB at least: a high-memory queue leaves small tasks to the others) and `core_count` (cores per
rank). A task fits when its memory estimate lies within [memory_min, memory] and it needs no more cores per rank.
The estimate is the declared memory_per_rank_mb until the task's scouts measured a PSS (central/scouts.py), then
the highest PSS a scout measured: a task that turns out bigger than a queue's limit goes on on a queue that fits.

This module is the one place that decides the fit: claim_activated (the dispatch order) adds fit_sql() to its
WHERE clause; a job's range requests and its end use job_fits(), with the limit the job's queue sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput
from .limits import BIG

# the task's memory estimate per rank in SQL (t: the tasks table): measured by the scouts, else declared
TASK_MEMORY_SQL = "coalesce(t.scout_pss_mb, t.memory_per_rank_mb)"


@dataclass(frozen=True)
class Resources:
    """What one rank of the asking queue offers; None: not said (no limit)."""

    computing_element: str | None = None
    memory: int | None = None
    memory_min: int | None = None
    core_count: int | None = None

    @classmethod
    def of(cls, computing_element: Any = None, memory: Any = None, memory_min: Any = None, core_count: Any = None):
        return cls(
            None if computing_element in (None, "") else str(computing_element)[:200],
            _mb("memory", memory),
            _mb("memory_min", memory_min),
            _mb("core_count", core_count),
        )


NO_LIMITS = Resources()


def _mb(name: str, value: Any) -> int | None:
    """A non-negative integer request parameter (PanDA sends numbers as strings), None when absent or 0/''."""
    if value in (None, "", "NULL"):
        return None
    try:
        number = int(float(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{name} must be a number of MB (or cores), got {value!r:.80}") from exc
    if isinstance(value, bool) or not 0 <= number <= BIG:
        raise InvalidInput(f"{name} must be a non-negative number, got {value!r:.80}")
    return number or None


def fit_sql(res: Resources) -> tuple[str, tuple]:
    """(" AND ...", args) that keeps the tasks (alias t) that fit a rank of the asking queue; ("", ()) for none."""
    sql, args = "", ()  # type: tuple[str, tuple[int, ...]]
    if res.memory is not None:
        sql, args = sql + f" AND {TASK_MEMORY_SQL} <= ?", (*args, res.memory)
    if res.memory_min is not None:
        sql, args = sql + f" AND {TASK_MEMORY_SQL} >= ?", (*args, res.memory_min)
    if res.core_count is not None:
        sql, args = sql + " AND coalesce(t.cores_per_rank, 1) <= ?", (*args, res.core_count)
    return sql, args


def task_memory(task: Any) -> int:
    """The task's memory estimate per rank in MB: the scouts' highest PSS once measured, else the declared one."""
    measured = _col(task, "scout_pss_mb")
    return int(measured) if measured else int(task["memory_per_rank_mb"])


def job_fits(job: Any, task: Any) -> bool:
    """Whether the task (its current estimate) still fits the queue the job was dispatched to."""
    limit = _col(job, "mem_limit_mb")
    return limit is None or task_memory(task) <= int(limit)


def _col(row: Any, name: str) -> Any:
    # sqlite3.Row has keys() but no get(): keys() is needed (SIM118 does not apply)
    return row[name] if name in row.keys() else None  # noqa: SIM118
