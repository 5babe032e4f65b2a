"""`harvester-edge demo` end to end on the embedded default, its summary checked against the central records."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

from harvester_edge import demo as demo_mod
from jumbo import payloads

from .conftest import numpy_task, require_mpi


# -- pure parts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022",
            ("Open MPI", "4.1.4"),
        ),
        ("mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/", ("Open MPI", "5.0.11")),
        ("MPICH Version:      4.2.0\nMPICH Release date: Fri Feb  9 12:29:21 CST 2024", ("MPICH", "4.2.0")),
        (
            "HYDRA build details:\n    Version:                                 4.2.0\n    Release Date: x",
            ("MPICH", "4.2.0"),
        ),
        ("Intel(R) something else", None),
    ],
)
def test_parse_mpi_version(text, expected):
    assert demo_mod.parse_mpi_version(text) == expected


def test_launcher_next_to_finds_the_prefix_of_the_library(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "bin").mkdir()
    lib = tmp_path / "lib" / "libmpi.so.40"
    lib.write_bytes(b"")
    assert demo_mod.launcher_next_to(str(lib)) is None  # no launcher there yet
    mpirun = tmp_path / "bin" / "mpirun"
    mpirun.write_text("#!/bin/sh\n")
    mpirun.chmod(0o755)
    assert demo_mod.launcher_next_to(str(lib)) == mpirun
    assert demo_mod.launcher_next_to("") is None


def test_render_summary_shows_the_numbers():
    from rich.console import Console

    summary = demo_mod.Summary(
        task_id=3,
        status="finished",
        events=4000,
        events_finished=4000,
        events_failed=0,
        events_retried=40,
        ranges_retried=2,
        wall_seconds=11.5,
        events_per_second=347.8,
        ranks=4,
        payload_busy_seconds=6.5,
        payload_cpu_seconds=1.2,
        efficiency=0.2,
        workers=2,
    )
    console = Console(width=120, record=True)
    console.print(demo_mod.render_summary(summary))
    text = console.export_text()
    for needle in ("task 3: finished", "4,000 of 4,000", "40 (2 ranges)", "11.5 s", "347.8", "20%"):
        assert needle in text
    # the efficiency figure never stands bare: what it measures, and what set the rate
    flat = " ".join(text.replace("│", " ").split())
    assert f"{347.8 / 4:,.1f} per rank" in flat and "1.62 ms busy" in flat
    assert "20% of the ranks' time (payload busy time / ranks x worker run time)" in flat
    assert "not the payload" in flat and "efficiency" not in flat
    busy = dataclasses.replace(summary, efficiency=0.9)
    console = Console(width=120, record=True)
    console.print(demo_mod.render_summary(busy))
    assert "the payload sets the event rate" in " ".join(console.export_text().replace("│", " ").split())


# -- MPI set-up --------------------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_prepare_mpi_accepts_the_consistent_mpi_and_refuses_a_mismatched_launcher(tmp_path, monkeypatch):
    require_mpi()
    described = demo_mod.prepare_mpi()  # the environment as the tests run it: consistent, 2 ranks in one world
    assert demo_mod.parse_mpi_version(described) is not None
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mpirun").write_text("#!/bin/sh\necho 'mpirun (Open MPI) 9.9.9'\n")
    (fake / "mpirun").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    from harvester_edge.seams.commands import CommandRunner

    lib = CommandRunner().run([sys.executable, "-c", demo_mod.MPI_PROBE], timeout=60).stdout.splitlines()[0]
    if demo_mod.launcher_next_to(lib) is not None:  # a wheel's own launcher is put first: the fake is bypassed
        assert "9.9.9" not in demo_mod.prepare_mpi()
    else:
        with pytest.raises(demo_mod.DemoError, match="MPI mismatch.*9.9.9"):
            demo_mod.prepare_mpi()


# -- end to end --------------------------------------------------------------------------------------------------
@pytest.mark.mpi
def test_demo_runs_a_task_to_the_end_and_its_summary_matches_the_central_records(demo_run):
    require_mpi()
    task = demo_run.task_file(numpy_task(600))
    code, summary, err = demo_run.run("--task", str(task))
    assert code == 0, err
    with demo_run.central() as conn:
        status, n_events = conn.execute(
            "SELECT status, n_events FROM tasks WHERE task_id = ?", (summary["task_id"],)
        ).fetchone()
        ranges = conn.execute(
            "SELECT start_event, last_event, status, attempt_nr FROM ranges WHERE task_id = ?", (summary["task_id"],)
        ).fetchall()
    assert status == summary["status"] == "finished" and n_events == summary["events"] == 600
    finished = [(a, b) for a, b, s, _ in ranges if s == 3]
    assert summary["events_finished"] == sum(b - a + 1 for a, b in finished) == 600
    assert summary["events_failed"] == 0
    assert summary["events_retried"] == sum(b - a + 1 for a, b, _, n in ranges if n > 1)
    assert summary["wall_seconds"] > 0
    assert summary["events_per_second"] == pytest.approx(600 / summary["wall_seconds"])
    assert summary["workers"] >= 1 and summary["ranks"] >= 2
    assert 0 < summary["efficiency"] <= 1
    # the outputs the summary points at: manifests covering every event once, files that recompute
    listed = []
    for manifest in summary["manifests"]:
        data = json.loads(Path(manifest).read_text())
        listed += [(f["startEvent"], f["lastEvent"], f["path"]) for f in data["files"]]
    events = sorted(ev for a, b, _ in listed for ev in range(a, b + 1))
    assert events == list(range(1, 601))
    assert summary["outputs"] == len(listed) == 30
    for first, last, path in listed[::7]:
        assert payloads.verify(path, summary["task_id"], first, last, {"size": 32, "rounds": 1})
    for ap in summary["access_points"]:  # every worker ended before the demo returned
        assert (Path(ap) / "local.exit").read_text().strip() == "0"


@pytest.mark.mpi
def test_demo_reports_failed_and_retried_events_and_exits_non_zero(demo_run):
    require_mpi()
    payload = {
        "kind": "python",
        "callable": "jumbo.payloads:fail",
        "args": {"fail_events": [5, 305], "code": 42, "then": "jumbo.payloads:simulate", "size": 32, "rounds": 1},
    }
    task = demo_run.task_file(numpy_task(400, attempts=2, payload=payload))
    code, summary, err = demo_run.run("--task", str(task))
    assert code == 1, err
    with demo_run.central() as conn:
        ranges = conn.execute(
            "SELECT start_event, last_event, status, attempt_nr FROM ranges WHERE task_id = ?", (summary["task_id"],)
        ).fetchall()
    assert summary["status"] == "failed"
    assert summary["events_failed"] == sum(b - a + 1 for a, b, s, _ in ranges if s in (7, 8)) == 40
    assert summary["events_finished"] == sum(b - a + 1 for a, b, s, _ in ranges if s == 3) == 360
    assert summary["events_retried"] == sum(b - a + 1 for a, b, _, n in ranges if n > 1) >= 40
    assert summary["ranges_retried"] == sum(1 for *_, n in ranges if n > 1) >= 2


@pytest.mark.mpi
def test_ctrl_c_aborts_the_task_and_leaves_no_worker_running(demo_run):
    require_mpi()
    task = demo_run.task_file(
        {
            **numpy_task(3000, per_range=10),
            "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.02}},
        }
    )
    proc = demo_run.popen("--task", str(task))
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with demo_run.central() as conn:
                    done = conn.execute("SELECT count(*) FROM ranges WHERE status = 3").fetchone()[0]
            except sqlite3.Error:  # the database is not there yet
                done = 0
            if done >= 2:
                break
            assert proc.poll() is None, (demo_run.root / "demo.out").read_text()
            time.sleep(0.3)
        assert done >= 2, "no range finished in 90 s"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    with demo_run.central() as conn:
        assert conn.execute("SELECT status FROM tasks").fetchone()[0] == "aborted"
    with sqlite3.connect(f"file:{demo_run.work / 'harvester.db'}?mode=ro", uri=True) as conn:
        workers = conn.execute("SELECT state, access_point FROM workers").fetchall()
    assert workers and all(state in ("cancelled", "finished") for state, _ in workers), workers
    for _, ap in workers:  # no process of any worker's session is left
        sid = int((Path(ap) / "local.pid").read_text())
        alive = [
            p.pid
            for p in psutil.process_iter(["status"])
            if _sid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE
        ]
        assert not alive, f"worker {ap}: processes {alive} still run"


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
