"""WORK_SHORTAGE: the central service tells the harvesters it has less work than the resources they offer.

As PanDA operators use it: in a shortage, sites fill their pledged resources first and leave opportunistic ones
(beyond the pledge: backfill, a friendly allocation) alone. A harvester then gives an `opportunistic` queue no new
jobs or workers and keeps a queue with `pledged_cores` within its pledge (agents/fetcher.py, agents/submitter.py).

The mode is the operator's (`harvester-edge central shortage on|off|auto`, POST /api/v1/task/set_work_shortage),
kept in the central DB's meta table:
- on: a shortage, whatever the queue of work;
- off: never a shortage;
- auto (the default): a shortage while the service has no work to hand out: no ready range and no activated job
  of a defined or running task.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidInput
from .store import shortage as rows

MODES = ("on", "off", "auto")
DEFAULT = "auto"


def mode(conn: Any) -> str:
    current = rows.mode(conn)
    return current if current in MODES else DEFAULT


def set_mode(conn: Any, value: Any) -> dict[str, Any]:
    """The operator's switch; the state it gives."""
    if value not in MODES:
        raise InvalidInput(f"work shortage mode must be one of {', '.join(MODES)}, got {value!r:.40}")
    rows.set_mode(conn, value)
    return state(conn)


def state(conn: Any) -> dict[str, Any]:
    """{"shortage": bool, "mode": on|off|auto, "reason": text} as the harvesters and the monitor read it."""
    current = mode(conn)
    if current == "on":
        return {"shortage": True, "mode": current, "reason": "declared by the operator"}
    if current == "off":
        return {"shortage": False, "mode": current, "reason": "switched off by the operator"}
    work = rows.has_work(conn)
    return {
        "shortage": not work,
        "mode": current,
        "reason": "work is waiting" if work else "no ready range and no activated job of an active task",
    }
