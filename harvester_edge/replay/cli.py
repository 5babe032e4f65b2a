"""`harvester-edge replay TRACE` and `harvester-edge simulate`: the click commands of offline replay.

Registered by harvester_edge.cli (cli.add_command(replay_command, "replay"), ...(simulate_command, "simulate")).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import click

from harvester_edge.replay.synthetic import Behaviour


@click.command("replay")
@click.argument("trace_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strict", is_flag=True, help="exit 1 when the replay diverges from the recording")
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def replay_command(trace_path: Path, strict: bool, as_json: bool, no_progress: bool) -> None:
    """Replay a recorded run (JSONL, .gz too) with a virtual clock: no batch system, no network, no sleeping.

    Reports the first call where this code's requests differ from the recording, with a diff.
    """
    from harvester_edge.replay.replayer import replay  # heavy (the site: FastAPI, uvicorn): only for this command

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = replay(trace_path, progress=not no_progress and not as_json and sys.stderr.isatty())
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render())
    if strict and not report.ok:
        sys.exit(1)


def _sizes(text: str) -> list[int]:
    try:
        return [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected sizes such as 1000,10000,100000, got {text!r}") from exc


@click.command("simulate")
@click.option(
    "--workers",
    "sizes",
    default="1000,10000",
    show_default=True,
    help="comma-separated workload sizes (workers; 10 ranges each, at most 1,000,000 ranges)",
)
@click.option("--queue-wait", default=60.0, show_default=True, help="mean seconds a worker pends in the queue")
@click.option("--fail-rate", default=0.02, show_default=True, help="share of workers failing at start")
@click.option("--kill-rate", default=0.02, show_default=True, help="share of pilots killed at the walltime")
@click.option(
    "--max-running",
    type=int,
    default=None,
    help="the queue's max_running_workers (default: 0.5% of the workers, at least 2, so every size runs the same "
    "number of waves and its workers the same ranges each; with --days: 200)",
)
@click.option(
    "--kills",
    default=0,
    show_default=True,
    help="kill the daemon this many times per run (SIGKILL-like, inside a batch command, HTTP call, pilot-file "
    "operation or transaction) and restart it; the JSON then counts lost and doubled workers and ranges",
)
@click.option("--kill-seed", default=1, show_default=True, help="seed of the kill moments and kinds")
@click.option(
    "--work-dir",
    type=click.Path(exists=True, file_okay=False, writable=True, path_type=Path),
    default=None,
    help="an existing, writable directory where the simulated sites live, in a he-sim-* folder of it "
    "(default: a temporary folder on /dev/shm, removed after)",
)
@click.option(
    "--days",
    type=float,
    default=0.0,
    help="instead of the sizes: steady work for this many virtual days (a job of --ranges-per-job ranges every "
    "--job-every seconds, --keep-history short), with the DB's size and rows per table at each virtual day",
)
@click.option("--job-every", default=7200.0, show_default=True, help="with --days: seconds between arriving jobs")
@click.option("--ranges-per-job", default=200, show_default=True, help="with --days: ranges each job brings")
@click.option(
    "--keep-history", default=86400.0, show_default=True, help="with --days: the sweeper's daemon.keep_history (s)"
)
def simulate_command(
    sizes: str,
    queue_wait: float,
    fail_rate: float,
    kill_rate: float,
    max_running: int | None,
    kills: int,
    kill_seed: int,
    work_dir: Path | None,
    days: float = 0.0,
    job_every: float = 7200.0,
    ranges_per_job: int = 200,
    keep_history: float = 86400.0,
) -> None:
    """Drive the real agents at virtual time against a synthetic batch system, central service and pilots, and
    report the harvester's CPU time, DB size and cycle times per workload size (last line: JSON)."""
    from harvester_edge.replay.sim import default_work_root, scale_point  # heavy: see replay_command

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    behaviour = Behaviour(queue_wait=queue_wait, fail_rate=fail_rate, kill_rate=kill_rate)
    root = Path(tempfile.mkdtemp(prefix="he-sim-", dir=work_dir or default_work_root()))
    if days > 0:
        try:
            steady(days, root, behaviour, max_running or 200, job_every, ranges_per_job, keep_history)
        finally:
            if work_dir is None:
                shutil.rmtree(root, ignore_errors=True)
        return
    rows = []
    try:
        for n in _sizes(sizes):
            rows.append(scale_point(n, root, behaviour, max_running, kills, kill_seed).row())
            click.echo(f"simulated {n} workers: {json.dumps(rows[-1])}", err=True)
            shutil.rmtree(root / f"sim-{n}", ignore_errors=True)
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    click.echo(render_table(rows))
    if kills:
        click.echo(render_chaos(rows))
    click.echo(json.dumps(summary(rows)))


def steady(
    days: float,
    root: Path,
    behaviour: Behaviour,
    max_running: int,
    job_every: float,
    ranges_per_job: int,
    keep_history: float,
) -> None:
    """`simulate --days N`: a table of the book's size per virtual day, then the JSON line (with `bounded`: the
    last day's file and rows are no more than 1.25x those at the first day past keep_history + 1 day)."""
    from harvester_edge.replay.sim import steady_point

    row = steady_point(
        days,
        root,
        behaviour,
        max_running=max_running,
        job_every=job_every,
        ranges_per_job=ranges_per_job,
        keep_history=keep_history,
    ).row()
    per_day = row["days"]
    tables = list(per_day[0]["rows"]) if per_day else []
    lines = ["  ".join(f"{c:>13}" for c in ["day", "db_mb", "free_pages", "ranges_done", *tables])]
    for d in per_day:
        cells = [d["day"], d["db_mb"], d["free_pages"], d["ranges_done"], *(d["rows"][t] for t in tables)]
        lines.append("  ".join(f"{c:>13}" for c in cells))
    click.echo("\n".join(lines))
    settled = [d for d in per_day if d["day"] * 86400.0 >= keep_history + 2 * 86400.0]
    bounded = bool(settled) and all(
        settled[-1]["db_mb"] <= 1.25 * settled[0]["db_mb"]
        and settled[-1]["rows"][t] <= 1.25 * max(settled[0]["rows"][t], 1)
        for t in tables
    )
    summary_row = {k: v for k, v in row.items() if k != "days"}
    click.echo(
        json.dumps(
            {
                "benchmark": "simulate-steady",
                "days": days,
                "job_every_s": job_every,
                "ranges_per_job": ranges_per_job,
                "keep_history_s": keep_history,
                "vacuum": "none (SQLite reuses free pages; no auto/incremental vacuum)",
                "run": summary_row,
                "per_day": per_day,
                "bounded": bounded,
            }
        )
    )


def summary(rows: list[dict]) -> dict:
    """Figures plus growth ratios between successive sizes: cost per worker staying flat means linear growth."""
    out: dict = {"benchmark": "simulate", "points": rows}
    ratios = []
    for a, b in itertools.pairwise(rows):
        ratios.append(
            {
                "from": a["workers"],
                "to": b["workers"],
                "workers_x": round(b["workers"] / max(1, a["workers"]), 2),
                "cpu_x": round(b["harvester_cpu_s"] / max(1e-9, a["harvester_cpu_s"]), 2),
                "cpu_per_worker_x": round(b["cpu_ms_per_worker"] / max(1e-9, a["cpu_ms_per_worker"]), 2),
                "cpu_per_range_x": round(b["cpu_ms_per_range"] / max(1e-9, a["cpu_ms_per_range"]), 2),
                "ranges_per_worker_x": round(b["ranges_per_worker"] / max(1e-9, a["ranges_per_worker"]), 2),
                "db_x": round(b["db_mb"] / max(1e-9, a["db_mb"]), 2),
            }
        )
    out["ratios"] = ratios
    if len(rows) > 1:  # the smallest size to the largest: issue 15's flat cost per worker (target <= 1.15)
        first, last = rows[0], rows[-1]
        out["cpu_per_worker_x_first_to_last"] = round(
            last["cpu_ms_per_worker"] / max(1e-9, first["cpu_ms_per_worker"]), 2
        )
        out["ranges_per_worker_x_first_to_last"] = round(
            last["ranges_per_worker"] / max(1e-9, first["ranges_per_worker"]), 2
        )
    out["linear_or_better"] = all(r["cpu_per_worker_x"] <= 1.5 for r in ratios)
    if any("chaos" in row for row in rows):
        out["chaos_ok"] = all(row["chaos"]["ok"] for row in rows)
    return out


CHAOS_COLUMNS = [
    "kills",
    "batch_jobs",
    "workers_known",
    "workers_lost",
    "workers_doubled",
    "workers_tracked_twice",
    "ranges_finished",
    "ranges_lost",
    "ranges_double_finished",
    "range_reports_redelivered",
    "ok",
]


def render_chaos(rows: list[dict]) -> str:
    """Per size: the kills (by kind) and the lost/doubled accounting."""
    lines = ["  ".join(f"{c:>{max(7, len(c))}}" for c in ["workers", *CHAOS_COLUMNS])]
    for row in rows:
        chaos = row["chaos"]
        cells = [row["workers"], *(chaos[c] for c in CHAOS_COLUMNS)]
        lines.append("  ".join(f"{v!s:>{max(7, len(c))}}" for v, c in zip(cells, ["workers", *CHAOS_COLUMNS])))
        lines.append("    kills by kind: " + ", ".join(f"{k}={n}" for k, n in sorted(chaos["kills_by_kind"].items())))
    return "\n".join(lines)


def render_table(rows: list[dict]) -> str:
    cols = [
        "workers",
        "ranges_done",
        "virtual_s",
        "real_s",
        "harvester_cpu_s",
        "cpu_ms_per_worker",
        "cpu_ms_per_range",
        "ranges_per_worker",
        "max_running",
        "db_mb",
        "cycle_ms_median",
        "cycle_ms_p99",
        "cycle_ms_max",
        "cycles",
    ]
    lines = ["  ".join(f"{c:>17}" for c in cols)]
    for row in rows:
        lines.append("  ".join(f"{row[c]:>17}" for c in cols))
    return "\n".join(lines)
