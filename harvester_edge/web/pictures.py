"""The timelines of each page as SVG strings: history.py's data drawn by timecharts.py / charts.py.

One function per page (and the report), each returning {name: svg}; the pages and the report put them in their
own template blocks (templates/timelines_*.html)."""

from __future__ import annotations

import sqlite3

from harvester_edge.central.store.conn import Conn

from . import charts, history, timecharts


def task(central: Conn, harvester: sqlite3.Connection | None, t: dict, now: float) -> dict:
    done = history.events_finished(central, t, now)
    dashed: dict[str, list[tuple[float, float]]] = {}
    marks: list[tuple[float, str]] = []
    if done["expected_end"]:
        dashed["expected"] = [(now, done["done"]), (done["expected_end"], done["n_events"])]
        label = timecharts.clock(done["expected_end"], done["t1"] - done["t0"])
        marks.append((done["expected_end"], f"expected end {label}"))
    workers = history.task_workers(harvester, t["task_id"], now)
    return {
        "events": timecharts.time_chart(
            {"events finished": done["points"]},
            "events finished (cumulative)",
            done["t0"],
            done["t1"],
            step=True,
            dashed=dashed,
            marks=marks,
            ymax=float(done["n_events"] or 0) or None,
            width=900,
            height=220,
        ),
        "workers": timecharts.timeline_chart(
            workers["rows"],
            "workers: queued → running → ended",
            min(workers["t0"], done["t0"]),
            max(workers["t1"], now if done["active"] else workers["t1"]),
            total=workers["total"],
        ),
        "expected_end": done["expected_end"],
        "rate": done["rate"],
    }


def dashboard(harvester: sqlite3.Connection | None, now: float) -> dict:
    running = history.running_per_queue(harvester, now)
    return {
        "running_workers": timecharts.time_chart(
            _now_in_legend(running["workers"]),
            "running workers per queue (last 24 h)",
            running["t0"],
            running["t1"],
            step=True,
            width=900,
        ),
        "running_cores": timecharts.time_chart(
            _now_in_legend(running["cores"]),
            "cores in use per queue (last 24 h)",
            running["t0"],
            running["t1"],
            step=True,
            width=900,
        ),
    }


def _now_in_legend(series: dict[str, list]) -> dict[str, list]:
    """{"queue (value now)": points}: the latest value, which a 24 h axis draws as a sliver at its right edge."""
    return {f"{name} ({pts[-1][1]:g})" if pts else name: pts for name, pts in series.items()}


def sites(harvester: sqlite3.Connection | None, now: float) -> dict:
    waits = history.wait_times(harvester, now)
    return {
        "wait_chart": timecharts.grouped_bars(
            waits["bins"], waits["series"], "queue wait (submitted → started) per queue: workers"
        ),
        "wait_figures": waits["figures"],
    }


def job(
    harvester: sqlite3.Connection | None,
    central_job: dict,
    workers: list[dict],
    now: float,
    reports: dict[int, dict | None] | None = None,
) -> dict:
    """reports: {worker id: its jobReport.json} already read by the page (the nodes its ranks ran on)."""
    nodes = {wid: n for wid, report in (reports or {}).items() if (n := history.report_nodes(report))}
    line = history.job_workers_timeline(harvester, central_job, now, nodes)
    busy = [
        {
            "worker": w["id"],
            "svg": charts.bar_chart(
                history.busy_per_rank(harvester, w, now),
                f"worker {w['id']}: busy fraction per rank",
                height=150,
                ymax=100.0,
                unit="%",
            ),
        }
        for w in workers[-4:]
    ]
    return {
        "timeline": timecharts.timeline_chart(
            line["rows"], "node, start and end (workers and the job)", line["t0"], line["t1"], total=line["total"]
        ),
        "busy": busy,
    }
