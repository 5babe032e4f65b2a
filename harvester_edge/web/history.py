"""What happened over time, for the timelines: read from the central DB (ranges with their modified times, jobs)
and the harvester's DB (workers with submitted/started/ended times, event ranges with the pilot's timing).

Pure functions of (connections, ids, now), each one or two aggregated queries: with 10,000 workers in the DB a page
stays well under 200 ms (scripts/bench/monitor measures it). Values that came from a pilot (range timings, ranks)
are checked before they are used: a hostile pilot gets a gap in a chart, never an error page.
"""

from __future__ import annotations

import bisect
import math
import sqlite3
from typing import TYPE_CHECKING, Any

from harvester_edge.central.states import TASK_TERMINAL, RangeStatus
from harvester_edge.central.store import monitor
from harvester_edge.central.store.conn import Conn
from harvester_edge.store import ranges
from harvester_edge.store import workers as worker_rows

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # in typing from Python 3.13


DAY = 86400.0
TIMELINE_WORKERS = 50  # newest workers drawn in a task's worker timeline
CUMULATIVE_POINTS = 120  # points of the events-finished line
WAIT_BINS = (
    (10, "<10s"),
    (30, "10-30s"),
    (60, "30s-1m"),
    (300, "1-5m"),
    (900, "5-15m"),
    (3600, "15m-1h"),
    (4 * 3600, "1-4h"),
    (math.inf, ">4h"),
)
MAX_RANKS = 256  # bars of the per-rank busy chart


def _finite(v: object) -> TypeIs[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- task -----------------------------------------------------------------------------------------------------
def events_finished(central: Conn, task: dict, now: float) -> dict:
    """{"points": [(t, cumulative events)], "t0", "t1", "expected_end" (None when done or unknown), "rate"}.

    t0 is the task's creation; the expected end extrapolates the rate since the first finished range."""
    t0 = float(task.get("created") or now)
    first, last = monitor.finished_span(central, task["task_id"], int(RangeStatus.FINISHED))
    points: list[tuple[float, float]] = [(t0, 0.0)]
    if first is not None:
        width = max((last - t0) / CUMULATIVE_POINTS, 1.0)
        total = 0.0
        for bucket, n in monitor.finished_buckets(central, task["task_id"], int(RangeStatus.FINISHED), t0, width):
            total += n
            points.append((min(t0 + (bucket + 1) * width, last), total))
    done, n_events = points[-1][1], task.get("n_events") or 0
    expected = rate = None
    active = task.get("status") not in {s.value for s in TASK_TERMINAL}
    if active and now > points[-1][0]:
        points.append((now, done))  # flat until now: nothing finished since
    if first is not None and done > 0:
        rate = done / max(now - first, 1.0) if active else done / max(last - first, 1.0)
        if active and n_events > done:
            expected = now + (n_events - done) / rate
    t1 = max(now if active else (last or now), expected or 0, t0 + 60)
    return {
        "points": points,
        "t0": t0,
        "t1": t1,
        "expected_end": expected,
        "rate": rate,
        "done": done,
        "n_events": n_events,
        "now": now,
        "active": active,
    }


def task_workers(harvester: sqlite3.Connection | None, task_id: int, now: float, limit: int = TIMELINE_WORKERS) -> dict:
    """{"rows": timeline rows of the task's newest workers, "total": how many, "t0", "t1"} (harvester DB)."""
    if harvester is None:
        return {"rows": [], "total": 0, "t0": now, "t1": now}
    total = worker_rows.count_of_task(harvester, task_id)
    rows = worker_rows.newest_of_task(harvester, task_id, limit)
    return _timeline(list(reversed(rows)), total, now)


def _timeline(rows, total: int, now: float, nodes: dict[int, str] | None = None) -> dict:
    out, starts, ends = [], [], []
    for r in rows:
        r = dict(r)
        submitted = r["submitted_at"] or r["created_at"]
        started, ended = r["started_at"], r["ended_at"]
        queued_end = started or ended or now
        where = (nodes or {}).get(r["id"]) or r["queue"]
        row = {
            "label": f"w{r['id']} {where} ×{r['nodes']}n",
            "end": r["state"],
            "queued": (submitted, queued_end) if submitted else None,
            "running": (started, ended or now) if started else None,
            "tip": f"worker {r['id']} ({r['queue']}, {r['nodes']} node(s) × {r['ranks_per_node']} ranks): "
            f"{r['state']}" + (f", exit code {r['exit_code']}" if r["exit_code"] is not None else ""),
        }
        out.append(row)
        starts.append(submitted or started or now)
        ends.append(ended or now)
    return {"rows": out, "total": total, "t0": min(starts, default=now), "t1": max(ends, default=now)}


# -- dashboard ------------------------------------------------------------------------------------------------
def running_per_queue(
    harvester: sqlite3.Connection | None, now: float, hours: int = 24, samples: int = 97, since: float | None = None
) -> dict:
    """{"workers": {queue: [(t, running workers)]}, "cores": {queue: [(t, cores)]}, "t0", "t1"} over the last
    `hours` (or since `since`); cores are nodes × ranks per node of each running worker (one core per rank)."""
    t0 = min(since, now - 60) if since is not None else now - hours * 3600
    out: dict[str, Any] = {"workers": {}, "cores": {}, "t0": t0, "t1": now}
    if harvester is None:
        return out
    by_queue: dict[str, tuple[list, list, list, list]] = {}
    for queue, nodes, ranks, start, end in worker_rows.running_during(harvester, t0, now):
        s, e, wc, we = by_queue.setdefault(queue, ([], [], [], []))
        cores = (nodes or 0) * (ranks or 0)
        s.append(start)
        wc.append((start, cores))
        if end is not None:
            e.append(end)
            we.append((end, cores))
    times = [t0 + (now - t0) * i / (samples - 1) for i in range(samples)]
    for queue, (s, e, wc, we) in sorted(by_queue.items()):
        s.sort(), e.sort(), wc.sort(), we.sort()
        cum_start, cum_end = _cumsum(c for _, c in wc), _cumsum(c for _, c in we)
        wc_t, we_t = [t for t, _ in wc], [t for t, _ in we]
        workers, cores = [], []
        for t in times:
            workers.append((t, float(bisect.bisect_right(s, t) - bisect.bisect_right(e, t))))
            i, j = bisect.bisect_right(wc_t, t), bisect.bisect_right(we_t, t)
            cores.append((t, float((cum_start[i - 1] if i else 0) - (cum_end[j - 1] if j else 0))))
        out["workers"][queue] = workers
        out["cores"][queue] = cores
    return out


def _cumsum(values) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


# -- sites ----------------------------------------------------------------------------------------------------
def wait_times(harvester: sqlite3.Connection | None, now: float) -> dict:
    """{"bins": labels, "series": {queue: [count per bin]}, "figures": [{queue, started, waiting, p50, p90, max}]}:
    how long each worker waited from submission to start, per queue; workers still queued count as waiting."""
    out: dict[str, Any] = {"bins": [label for _, label in WAIT_BINS], "series": {}, "figures": []}
    if harvester is None:
        return out
    waits: dict[str, list[float]] = {}
    queued: dict[str, int] = {}
    for queue, submitted, started in worker_rows.waits(harvester):
        if started is None:
            queued[queue] = queued.get(queue, 0) + 1
        elif submitted is not None:
            waits.setdefault(queue, []).append(max(started - submitted, 0.0))
    limits = [limit for limit, _ in WAIT_BINS]
    for queue in sorted(set(waits) | set(queued)):
        values = sorted(waits.get(queue, []))
        counts = [0] * len(WAIT_BINS)
        for v in values:
            counts[bisect.bisect_left(limits, v)] += 1
        out["series"][queue] = counts
        out["figures"].append(
            {
                "queue": queue,
                "started": len(values),
                "waiting": queued.get(queue, 0),
                "p50": _quantile(values, 0.5),
                "p90": _quantile(values, 0.9),
                "max": values[-1] if values else None,
            }
        )
    return out


def _quantile(values: list[float], q: float) -> float | None:
    return values[min(int(q * len(values)), len(values) - 1)] if values else None


# -- job ------------------------------------------------------------------------------------------------------
def job_workers_timeline(
    harvester: sqlite3.Connection | None, central_job: dict, now: float, nodes: dict[int, str] | None = None
) -> dict:
    """The job's workers as timeline rows (label: worker and its node(s) when known, from `nodes` or the job's
    node) plus the central service's start/end of the job."""
    if harvester is None:
        rows = []
    else:
        rows = worker_rows.newest_of_job(harvester, central_job["panda_id"], TIMELINE_WORKERS - 1)
    out = _timeline(list(reversed(rows)), len(rows), now, nodes or {})
    start, end = central_job.get("start_time"), central_job.get("end_time")
    node = central_job.get("node") or "node ?"
    if _finite(start):
        out["rows"].insert(
            0,
            {
                "label": f"job on {node}"[:28],
                "end": central_job.get("status"),
                "queued": None,
                "running": (start, end if _finite(end) else now),
                "tip": f"job {central_job['panda_id']} on node {node}: {central_job.get('status')}",
            },
        )
        out["t0"] = min(out["t0"], start)
        out["t1"] = max(out["t1"], end if _finite(end) else now)
    return out


def busy_per_rank(harvester: sqlite3.Connection | None, worker: dict, now: float) -> list[tuple[str, float]]:
    """[("rank N", % of the worker's running time that rank spent in event ranges)] from the pilot's range
    timings (startTime/endTime/rank in each reported range); ranges overlapping on one rank are not merged."""
    started = worker.get("started_at")
    if harvester is None or not _finite(started):
        return []
    ended = worker.get("ended_at")
    wall = (ended if _finite(ended) else now) - started
    n_ranks = max(int(worker.get("nodes") or 1) * int(worker.get("ranks_per_node") or 1), 1)
    busy: dict[int, float] = {}
    for rank, start, end in ranges.rank_timings(harvester, worker["id"]):
        if isinstance(rank, int) and 0 <= rank < min(n_ranks, MAX_RANKS) and _finite(start) and _finite(end):
            busy[rank] = busy.get(rank, 0.0) + max(min(end, now) - max(start, started), 0.0)
    if not busy or wall <= 0:
        return []
    return [
        (f"rank {r}", round(min(100.0 * busy.get(r, 0.0) / wall, 100.0), 1)) for r in range(min(n_ranks, MAX_RANKS))
    ]


# -- report ---------------------------------------------------------------------------------------------------
def task_queue_figures(harvester: sqlite3.Connection | None, task_id: int, now: float) -> list[dict]:
    """Per queue, over the task's workers: {queue, workers, states, node_hours, p50/p90 wait, max wait}."""
    if harvester is None:
        return []
    out: dict[str, dict] = {}
    for queue, state, nodes, submitted, started, ended in worker_rows.figures_of_task(harvester, task_id):
        q = out.setdefault(queue, {"queue": queue, "workers": 0, "states": {}, "node_hours": 0.0, "waits": []})
        q["workers"] += 1
        q["states"][state] = q["states"].get(state, 0) + 1
        if started is not None:
            q["node_hours"] += (nodes or 0) * max((ended or now) - started, 0) / 3600
            if submitted is not None:
                q["waits"].append(max(started - submitted, 0.0))
    for q in out.values():
        waits = sorted(q.pop("waits"))
        q.update(p50=_quantile(waits, 0.5), p90=_quantile(waits, 0.9), node_hours=round(q["node_hours"], 2))
    return [out[k] for k in sorted(out)]


def report_nodes(report: dict | None) -> str | None:
    """'nodeA,nodeB' from a jobReport.json's perRank entries (pilot input: strings only, a few, shortened)."""
    per_rank = report.get("perRank") if isinstance(report, dict) else None
    if not isinstance(per_rank, dict):
        return None
    names = sorted(
        {
            v["node"][:40]
            for v in list(per_rank.values())[:MAX_RANKS]
            if isinstance(v, dict) and isinstance(v.get("node"), str) and v["node"]
        }
    )
    return ",".join(names[:3]) + ("…" if len(names) > 3 else "") if names else None
