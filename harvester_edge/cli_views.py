"""CLI views: `status` (with --watch and the per-task BPS-style table), `worker show ID`, `errors summary`.

Register in harvester_edge/cli.py (see the names below); every view has --json for scripts. Pure functions build
the rows; render_* turn them into rich tables.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harvester_edge import status as status_view
from harvester_edge.central.store.database import reading
from harvester_edge.central.store.pg import is_postgresql_url
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.store.readonly import open_readonly
from harvester_edge.web import data
from harvester_edge.web.render import ts

# BPS-style columns: how the central service's range states roll up per task (job group).
BPS_COLUMNS = ("pending", "running", "succeeded", "failed", "cancelled")
_ROLLUP = {
    "ready": "pending",
    "sent": "running",
    "running": "running",
    "finished": "succeeded",
    "done": "succeeded",
    "merged": "succeeded",
    "failed": "failed",
    "fatal": "failed",
    "corrupted": "failed",
    "cancelled": "cancelled",
    "discarded": "cancelled",
}


def task_rows(tasks: list[dict]) -> list[dict]:
    """One row per task: range counts rolled up into the BPS columns, events done and percent."""
    rows = []
    for t in tasks:
        ranges = t.get("ranges") or {}
        row: dict[str, Any] = {
            "task_id": t.get("task_id"),
            "name": t.get("name"),
            "status": t.get("status"),
            **{c: 0 for c in BPS_COLUMNS},
        }
        for state, n in ranges.items():
            row[_ROLLUP.get(state, "pending")] += n
        row["total"] = sum(ranges.values())
        row["events_done"] = t.get("events_finished", 0)
        row["events"] = t.get("n_events", 0)
        row["percent"] = round(100.0 * row["events_done"] / row["events"], 1) if row["events"] else 0.0
        rows.append(row)
    return rows


def render_task_rows(rows: list[dict]) -> Table:
    table = Table(title="tasks: event ranges per state", title_justify="left")
    for col in ("task", "name", "status", *BPS_COLUMNS, "total", "events done", "%"):
        table.add_column(col, justify="left" if col in ("name", "status") else "right")
    for r in rows:
        table.add_row(
            str(r["task_id"]),
            str(r["name"]),
            str(r["status"]),
            *[str(r[c]) for c in BPS_COLUMNS],
            str(r["total"]),
            f"{r['events_done']}/{r['events']}",
            f"{r['percent']:.1f}",
        )
    return table


def status_renderable(snapshot: dict) -> Group:
    buf = io.StringIO()
    status_view.render({**snapshot, "tasks": []}, Console(file=buf, width=160, force_terminal=True))
    parts: list[Any] = []
    if snapshot.get("tasks"):
        parts.append(render_task_rows(task_rows(snapshot["tasks"])))
    parts.append(Text.from_ansi(buf.getvalue()))
    return Group(*parts)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("-w", "--watch", is_flag=True, help="redraw every --interval seconds until Ctrl-C")
@click.option("--interval", type=float, default=2.0, show_default=True)
@click.option("--iterations", type=int, default=0, hidden=True, help="stop after N redraws (tests)")
@click.pass_obj
def status_cmd(obj: Any, as_json: bool, watch: bool, interval: float, iterations: int) -> None:
    """Tasks (pending/running/succeeded/failed per task), queues, workers, jobs and event ranges per state."""

    def snapshot() -> dict:
        snap = status_view.collect(obj.config)
        snap["task_rows"] = task_rows(snap.get("tasks") or [])
        return snap

    if as_json:
        click.echo(json.dumps(snapshot(), indent=2, default=str))
        return
    if not watch:
        Console(width=160).print(status_renderable(snapshot()))
        return

    done = 0
    try:
        console = Console() if Console().is_terminal else Console(width=160)
        with Live(status_renderable(snapshot()), auto_refresh=False, console=console) as live:
            while not iterations or done < iterations:
                done += 1
                live.update(
                    Group(Text(time.strftime("%H:%M:%S  (Ctrl-C to stop)")), status_renderable(snapshot())),
                    refresh=True,
                )
                if iterations and done >= iterations:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


# -- worker show ----------------------------------------------------------------------------------------------
def worker_detail(db_path: Path, worker_id: int) -> dict | None:
    """The worker row, its state history, jobs, access-point files and archive, from the harvester DB (read-only)."""
    if not Path(db_path).exists():
        return None
    conn = open_readonly(db_path)
    try:
        row = data.worker(conn, worker_id)
        if row is None:
            return None
        row["state_history"] = data.state_history(conn, "workers", worker_id)
        row["jobs"] = data.worker_jobs(conn, worker_id)
        found = data.worker_archive(conn, worker_id)
        row["archive"] = str(found["path"]) if found else None
    finally:
        conn.close()
    row["files"] = data.ap_files(Path(row["access_point"]))
    return row


def render_worker(detail: dict, console: Console) -> None:
    info = Table(title=f"worker {detail['id']}", title_justify="left", show_header=False)
    info.add_column("field", style="dim")
    info.add_column("value")
    for key in (
        "state",
        "queue",
        "batch_id",
        "batch_state",
        "batch_reason",
        "exit_code",
        "error",
        "job_name",
        "access_point",
        "archive",
    ):
        if detail.get(key) not in (None, ""):
            info.add_row(key, str(detail[key]))
    info.add_row(
        "shape", f"{detail['nodes']} node(s) x {detail['ranks_per_node']} ranks, walltime {detail['walltime']} s"
    )
    info.add_row("jobs", " ".join(map(str, detail["jobs"])))
    for key in ("submitted_at", "started_at", "ended_at"):
        info.add_row(key, ts(detail.get(key)))
    files = detail["files"]
    info.add_row("files", " ".join(files["script"] + files["output"] + files["logs"]))
    console.print(info)
    history = Table(title="state history", title_justify="left")
    for col in ("at", "from", "to", "reason"):
        history.add_column(col)
    for h in detail["state_history"]:
        history.add_row(ts(h["at"]), h["src"], h["dst"], h["reason"] or "")
    console.print(history)


@click.group("worker", help="Workers of this harvester (read from its bookkeeping DB).")
def worker_group() -> None:
    pass


@worker_group.command("show", help="One worker: batch id, state history, jobs, access point files, archive.")
@click.argument("worker_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def worker_show(obj: Any, worker_id: int, as_json: bool) -> None:
    detail = worker_detail(obj.config.db_path, worker_id)
    if detail is None:
        raise click.ClickException(f"worker {worker_id} is not in {obj.config.db_path}: see `harvester-edge status`")
    if as_json:
        click.echo(json.dumps(detail, indent=2, default=str))
    else:
        render_worker(detail, Console(width=160))


# -- errors summary -------------------------------------------------------------------------------------------
@click.command(
    "summary",
    help="Failures grouped by source, code and message, with counts (embedded service, or central.db: postgresql://...).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def errors_summary(obj: Any, as_json: bool) -> None:
    db = obj.config.central.db
    if obj.config.central.mode == "remote" or db is None or not (is_postgresql_url(db) or Path(db).exists()):
        raise click.ClickException(
            "errors summary reads the central DB of the embedded service (or central.db: postgresql://...): none "
            f"here ({db}); on a remote service use its web monitor (/monitor/errors)"
        )
    try:
        with reading(db) as conn:
            groups = sorted(data.error_groups(conn), key=lambda g: -g["count"])
    except HarvesterEdgeError as exc:  # PostgreSQL unreachable, no schema, a newer schema
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(groups, indent=2, default=str))
        return
    table = Table(title="failures by source, code and message", title_justify="left")
    for col in ("source", "code", "message", "count", "tasks"):
        table.add_column(col, justify="right" if col in ("code", "count") else "left")
    for g in groups:
        table.add_row(str(g["source"]), str(g["code"]), str(g["message"]), str(g["count"]), str(g.get("tasks") or ""))
    Console(width=160).print(table)
