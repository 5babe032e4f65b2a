"""`harvester-edge status`: what the site holds, per state, read from the bookkeeping DB (never blocks the daemon)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harvester_edge import pledges
from harvester_edge.central.client import CentralClient
from harvester_edge.central.service import CentralService
from harvester_edge.config import SiteConfig
from harvester_edge.seams.http import HttpTransport
from harvester_edge.states import JobState, RangeState, WorkerState
from harvester_edge.store import alerts, jobs, outbox
from harvester_edge.store import queues as queue_rows
from harvester_edge.store import ranges as range_rows
from harvester_edge.store import workers as worker_rows
from harvester_edge.store.readonly import open_readonly


def _counts(rows: list[sqlite3.Row]) -> dict[tuple, int]:
    return {tuple(row[:-1]): row[-1] for row in rows}


def central_tasks(config: SiteConfig) -> tuple[list[dict], str | None]:
    """The central service's tasks (embedded: its DB file; remote: over HTTP), or a note why there are none."""
    settings = config.central
    try:
        if settings.mode == "remote" and settings.url:  # the config requires the url with mode remote
            client = CentralClient(HttpTransport(settings.url, 5.0), token_file=settings.tokens.token_file)
            return list(client.call("GET", "task/list")), None
        if settings.db is None or (isinstance(settings.db, Path) and not settings.db.exists()):
            return [], None

        service = CentralService.open(settings.db, settings)
        try:
            return list(service.list_tasks()), None
        finally:
            service.close()
    except Exception as exc:  # status must show what it can even when the central service is away
        return [], f"central service: {exc}"


def collect(config: SiteConfig) -> dict[str, Any]:
    """A JSON-able snapshot; an absent DB is reported as such rather than created."""
    tasks, note = central_tasks(config)
    snapshot: dict[str, Any] = {
        "site": config.site,
        "db": str(config.db_path),
        "tasks": tasks,
        "queues": [],
        "jobs": {},
        "workers": {},
        "event_ranges": {},
    }
    if note:
        snapshot["central_note"] = note
    if not config.db_path.exists():
        snapshot["note"] = "no bookkeeping database yet: the daemon has not run with this config"
        for queue in config.queues:
            snapshot["queues"].append({"name": queue.name, "batch": queue.batch, "draining": False, "workers": {}})
        return snapshot
    conn = open_readonly(config.db_path)
    try:
        workers = _counts(worker_rows.count_by_queue_state(conn))
        draining = queue_rows.draining_by_name(conn)
        for queue in config.queues:
            per_state = {state: n for (q, state), n in workers.items() if q == queue.name}
            snapshot["queues"].append(
                {
                    "name": queue.name,
                    "batch": queue.batch,
                    "draining": bool(draining.get(queue.name, 0)),
                    "workers": per_state,
                }
            )
        snapshot["jobs"] = {k[0]: v for k, v in _counts(jobs.count_by_state(conn)).items()}
        snapshot["workers"] = {k[0]: v for k, v in _counts(worker_rows.count_by_state(conn)).items()}
        snapshot["event_ranges"] = {k[0]: v for k, v in _counts(range_rows.count_by_state(conn)).items()}
        snapshot["outbox_pending"] = outbox.depth(conn)
        if alerts.has_table(conn):  # the alerts agent's view: what fires now (`harvester-edge alerts` for the rest)
            snapshot["alerts_firing"] = [
                {
                    "rule": r["rule"],
                    "key": r["key"],
                    "severity": r["severity"],
                    "since": r["since"],
                    "summary": r["summary"],
                }
                for r in alerts.firing(conn)
            ]
        snapshot["pledges"] = pledges.usage(
            conn, pledges.facts_of_config(config), time.time()
        )  # cores in use, core-hours vs the pledge
    finally:
        conn.close()
    return snapshot


def _state_table(title: str, states: list[str], counts: dict[str, int]) -> Table:
    table = Table(title=title, title_justify="left")
    for state in states:
        table.add_column(state, justify="right")
    table.add_column("total", justify="right", style="bold")
    table.add_row(*[str(counts.get(s, 0)) for s in states], str(sum(counts.values())))
    return table


def render(snapshot: dict[str, Any], console: Console | None = None) -> None:
    if console is None:  # piped output (cron mail, a log) gets wide tables rather than cut-off columns
        console = Console() if Console().is_terminal else Console(width=160)
    console.print(f"[bold]site[/bold] {snapshot['site']}   [dim]{snapshot['db']}[/dim]")
    if snapshot.get("note"):
        console.print(f"[yellow]{snapshot['note']}[/yellow]")
    if snapshot.get("central_note"):
        console.print(f"[yellow]{snapshot['central_note']}[/yellow]")
    if snapshot.get("tasks"):
        tasks = Table(title="tasks (central service)", title_justify="left")
        for col in ("task", "name", "status", "events", "finished", "ranges"):
            tasks.add_column(col, justify="right" if col in ("task", "events", "finished") else "left")
        for t in snapshot["tasks"]:
            ranges = t.get("ranges") or {}
            tasks.add_row(
                str(t.get("task_id")),
                str(t.get("name")),
                str(t.get("status")),
                str(t.get("n_events")),
                str(t.get("events_finished", "")),
                " ".join(f"{k}={v}" for k, v in sorted(ranges.items())) if isinstance(ranges, dict) else str(ranges),
            )
        console.print(tasks)
    worker_states = [s.value for s in WorkerState]
    queues = Table(title="queues", title_justify="left")
    for col in ["queue", "batch", "draining", *worker_states]:
        queues.add_column(col, justify="left" if col in ("queue", "batch", "draining") else "right")
    for q in snapshot["queues"]:
        queues.add_row(
            q["name"],
            q["batch"],
            "yes" if q["draining"] else "no",
            *[str(q["workers"].get(s, 0)) for s in worker_states],
        )
    console.print(queues)
    console.print(_state_table("jobs", [s.value for s in JobState], snapshot["jobs"]))
    console.print(_state_table("workers", worker_states, snapshot["workers"]))
    console.print(_state_table("event ranges", [s.value for s in RangeState], snapshot["event_ranges"]))
    if "outbox_pending" in snapshot:
        console.print(f"outbox: {snapshot['outbox_pending']} messages waiting for the central service")
    if snapshot.get("pledges"):
        console.print(pledge_table(snapshot["pledges"]))
    if "alerts_firing" in snapshot:
        console.print(alert_lines(snapshot["alerts_firing"]))


def alert_lines(firing: list[dict[str, Any]]) -> str:
    if not firing:
        return "alerts: none firing"
    lines = [f"[red]alerts: {len(firing)} firing[/red] (harvester-edge alerts)"]
    for a in firing:
        about = f"[{a['key']}]" if a["key"] else ""
        lines.append(f"  {a['severity']:<8} {a['rule']}{about}: {a['summary']}")
    return "\n".join(lines)


def pledge_table(usage: dict[str, Any]) -> Table:
    """Cores in use and core-hours of the last day against the pledge, per queue (harvester_edge.pledges)."""
    shortage = "[red]WORK_SHORTAGE[/red]" if usage.get("work_shortage") else "no work shortage"
    table = Table(title=f"cores and pledges (last 24 h; {shortage})", title_justify="left")
    for col in ("queue", "kind", "cores running", "cores waiting", "pledged cores", "core-h 24h", "pledge core-h", "%"):
        table.add_column(col, justify="left" if col in ("queue", "kind") else "right")
    for q in usage["queues"]:
        table.add_row(
            q["queue"],
            "opportunistic" if q["opportunistic"] else "pledged" if q["pledged_cores"] else "",
            str(q["cores_running"]),
            str(q["cores_waiting"]),
            "" if q["pledged_cores"] is None else str(q["pledged_cores"]),
            f"{q['core_hours_24h']:.2f}",
            "" if q["pledged_core_hours_24h"] is None else f"{q['pledged_core_hours_24h']:.0f}",
            "" if q["pledge_used_pct"] is None else f"{q['pledge_used_pct']:.1f}",
        )
    return table
