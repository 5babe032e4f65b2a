"""`harvester-edge report --task N --out report.html`: one self-contained HTML file about a task, to attach to a
ticket or paste into a chat: its summary, the timelines (inline SVG), failures grouped by error and the per-queue
figures. Inline CSS, no script, no link to anything outside the file (the monitor's pages need the service; this
does not).

Reads the central DB and the harvester DB of this site directly (read-only; safe next to a running daemon), so it
works where the central service is embedded (central.mode: embedded), or on a PostgreSQL central.db (the URL in
the site's config; read through the store layer as the service does).
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from pathlib import Path

import click

from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.central.store.pg import is_postgresql_url
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.web import data, history, pictures, timecharts
from harvester_edge.web.render import render

log = logging.getLogger(__name__)


def build(
    central_db: Path | str,
    harvester_db: Path | None,
    task_id: int,
    now: float | None = None,
    settings: CentralSettings | None = None,
) -> str:
    """The report's HTML for task `task_id` (NotFound when the central DB has no such task). central_db: the
    SQLite file or a postgresql:// URL (then settings: the site's central settings, for files_dir and pool)."""
    now = time.time() if now is None else now
    if is_postgresql_url(central_db):
        target: Path | str = str(central_db)
        settings = settings if settings is not None else CentralSettings(db=target)
    elif not Path(central_db).is_file():
        raise HarvesterEdgeError(
            f"no central DB at {central_db}: the report reads the embedded central service's "
            f"DB (central.db in the site's work_dir, or central.db: postgresql://...)"
        )
    else:
        target = Path(central_db)
        settings = CentralSettings(db=target)
    service = CentralService.open(target, settings)
    try:
        task = service.show_task(task_id)
        central = service.db.reader()
        hconn = data.open_harvester(harvester_db)
        with closing(hconn) if hconn is not None else _nothing():
            timelines = pictures.task(central, hconn, task, now)
            running = history.running_per_queue(hconn, now, since=task["created"])
            waits = history.wait_times(hconn, now)
            queues = history.task_queue_figures(hconn, task_id, now)
        errors = sorted(data.task_errors(central, task_id), key=lambda e: -e["count"])
    finally:
        service.close()
    task["progress"] = (
        round(100.0 * task.get("events_finished", 0) / task["n_events"], 1) if task.get("n_events") else 0.0
    )
    jobs: dict[str, int] = {}
    for j in task["jobs"]:
        jobs[j["status"]] = jobs.get(j["status"], 0) + 1
    return render(
        "report.html",
        {
            "title": f"task {task_id} report",
            "task": task,
            "timelines": timelines,
            "errors": errors,
            "queues": queues,
            "jobs_by_status": jobs,
            "now": now,
            "harvester_db": harvester_db,
            "running_chart": timecharts.time_chart(
                running["workers"],
                "running workers per queue, all tasks (since this one began)",
                running["t0"],
                running["t1"],
                step=True,
                width=900,
            ),
            "wait_chart": timecharts.grouped_bars(
                waits["bins"], waits["series"], "queue wait (submitted → started) per queue: workers"
            ),
        },
    )


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@click.command("report")
@click.option("--task", "task_id", type=int, required=True, help="the task to report on")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="the HTML file to write (one self-contained file)",
)
@click.pass_obj
def report_command(obj, task_id: int, out: Path) -> None:
    """Write one self-contained HTML report of a task: summary, timelines, failures by error, per-queue figures."""
    config = obj.config
    if config.central.mode == "remote":
        raise click.ClickException(
            "report reads the central DB on this machine: central.mode is remote here; run "
            "it where the central service (and its central.db) is"
        )
    try:
        html = build(config.central.db, config.db_path, task_id, settings=config.central)
    except HarvesterEdgeError as exc:  # no such task, no central DB
        raise click.ClickException(str(exc)) from exc
    out.write_text(html, encoding="utf-8")
    click.echo(f"report of task {task_id} written to {out} ({len(html) // 1024} KiB)")
