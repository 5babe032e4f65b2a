"""`harvester-edge logs`: payload log lines from the central service (embedded: its DB; remote: /api/v1/logs/list),
filtered by task, job, rank, stream and text; --follow keeps printing new lines as the harvester ships them."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import click

from harvester_edge.errors import HarvesterEdgeError

from .cli import _service
from .paylogs import LogFilter

PAGE = 1000


def line_text(rec: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(float(rec["time"]), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    where = f"job {rec['job']} rank {rec['rank']} {rec.get('range') or '-'} {rec['stream']}"
    return f"{when} {where} | {rec['msg']}"


@click.command("logs")
@click.option("--task", "task_id", type=int, required=True, help="the task whose payload output to show")
@click.option("--job", "panda_id", type=int, default=None, help="only this job (PandaID)")
@click.option("--rank", type=int, default=None, help="only this rank")
@click.option("--stream", type=click.Choice(["stdout", "stderr", "meta"]), default=None)
@click.option("--grep", default=None, help="only lines that contain this text")
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines as they arrive (Ctrl-C stops)")
@click.option("--interval", type=float, default=1.0, show_default=True, help="seconds between looks with --follow")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.pass_context
def logs_command(
    ctx: click.Context,
    task_id: int,
    panda_id: int | None,
    rank: int | None,
    stream: str | None,
    grep: str | None,
    follow: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Payload output (stdout/stderr) of a task's jobs, as the pilots' ranks wrote it: oldest first."""
    svc = None
    warned: set[int] = set()
    after = 0
    try:
        flt = LogFilter(task_id, panda_id, rank, stream, grep, limit=PAGE)
        svc = _service(ctx)
        while True:
            page = svc.payload_logs(replace(flt, after=after))
            for rec in page["lines"]:
                click.echo(json.dumps(rec) if as_json else line_text(rec))
            after = int(page["last_id"])
            for mark in page["truncated"]:
                if mark["job"] not in warned:
                    warned.add(mark["job"])
                    click.echo(
                        f"job {mark['job']}: payload log truncated at its bound ({mark['bytes']} bytes kept, "
                        f"{mark['dropped']} lines dropped)",
                        err=True,
                    )
            sys.stdout.flush()
            if len(page["lines"]) >= PAGE:
                continue
            if not follow:
                return
            time.sleep(max(0.05, interval))
    except HarvesterEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        return
    finally:
        if svc is not None:
            svc.close()
