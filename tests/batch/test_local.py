"""Local plugin with real processes: run, fail, cancel, walltime kill, a restarted plugin reading state back."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from harvester_edge.batch import TERMINAL, BatchState, WorkerSpec
from harvester_edge.plugins.local import LocalPlugin
from harvester_edge.seams.commands import CommandResult, CommandRunner


@pytest.fixture
def make(tmp_path, queue_factory):
    def factory(**queue_kw) -> LocalPlugin:
        q = queue_factory(name="laptop", batch="local", launcher="mpirun", **queue_kw)
        return LocalPlugin(q, CommandRunner(), registry=tmp_path / "registry")

    return factory


def spec(tmp_path: Path, wid: int, argv: list[str], walltime: int = 60, ranks: int = 1) -> WorkerSpec:
    return WorkerSpec(wid, f"he-local-w{wid:06d}", tmp_path / f"w{wid}", 1, ranks, 1, walltime, None, argv, {})


def wait_terminal(plugin: LocalPlugin, batch_id: str, limit: float = 30):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = plugin.status([batch_id])[batch_id]
        if status.state in TERMINAL:
            return status
        time.sleep(0.1)
    raise AssertionError(f"{batch_id} not terminal after {limit} s: {status}")


def wait_running(plugin: LocalPlugin, batch_id: str, limit: float = 10):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = plugin.status([batch_id])[batch_id]
        if status.state is BatchState.RUNNING and status.start_time:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{batch_id} not running after {limit} s")


def session_left(ap: Path) -> list[list[str]] | None:
    """The live processes of the worker's session; None while its wrapper has not written its pid yet."""
    try:
        sid = int((ap / "local.pid").read_text())
    except (OSError, ValueError):
        return None
    left = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.cmdline())
        except (OSError, psutil.Error):
            pass
    return left


def test_finished_and_failed(tmp_path, make):
    plugin = make()
    ok, bad = plugin.submit(
        [
            spec(tmp_path, 1, [sys.executable, "-c", "print('hello')"]),
            spec(tmp_path, 2, ["bash", "-c", "echo oops >&2; exit 3"]),
        ]
    )
    assert ok.ok and bad.ok
    done = wait_terminal(plugin, ok.batch_id)
    assert done.state is BatchState.FINISHED and done.exit_code == 0 and done.end_time >= done.start_time
    assert (tmp_path / "w1" / "local.out").read_text() == "hello\n"
    failed = wait_terminal(plugin, bad.batch_id)
    assert failed.state is BatchState.FAILED and failed.exit_code == 3
    assert "oops" in (tmp_path / "w2" / "local.err").read_text()


@pytest.mark.mpi
def test_mpirun_two_ranks(tmp_path, make, mpi4py_ok):
    code = (
        "from mpi4py import MPI; c = MPI.COMM_WORLD; v = c.allreduce(c.rank); print(c.size, v) if c.rank == 0 else None"
    )
    plugin = make(ranks_per_node=2, cores_per_node=2)
    [res] = plugin.submit([spec(tmp_path, 3, [sys.executable, "-c", code], ranks=2)])
    status = wait_terminal(plugin, res.batch_id, 60)
    assert status.state is BatchState.FINISHED, (tmp_path / "w3" / "local.err").read_text()
    assert (tmp_path / "w3" / "local.out").read_text().split() == ["2", "1"]
    assert "mpirun --oversubscribe -np 2" in (tmp_path / "w3" / "worker.sh").read_text()


def test_restart_reads_state_back_then_cancel_kills_the_tree(tmp_path, make):
    first = make()
    [res] = first.submit([spec(tmp_path, 4, ["bash", "-c", "sleep 300 & wait"])])
    running = wait_running(first, res.batch_id)
    pid = int((tmp_path / "w4" / "local.pid").read_text())
    assert os.getsid(pid) == pid != os.getsid(0)  # its own session: independent of the daemon
    deadline = time.monotonic() + 10  # running once the wrapper started: its children come a moment later
    while True:
        tree = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
        if len(tree) >= 4 or time.monotonic() > deadline:  # wrapper, timeout, the script's bash, its sleep
            break
        time.sleep(0.05)
    assert len(tree) >= 4, tree
    del first
    second = make()  # "the daemon restarted"
    assert second.status([res.batch_id])[res.batch_id].state is BatchState.RUNNING
    assert second.find_by_name(["he-local-w000004", "nope"]) == {"he-local-w000004": res.batch_id}
    assert second.cancel([res.batch_id]) == {res.batch_id: None}
    status = wait_terminal(second, res.batch_id, 10)
    assert status.state is BatchState.CANCELLED and status.start_time == running.start_time
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert second.cancel([res.batch_id]) == {res.batch_id: None}  # cancelling an ended worker is fine


def test_walltime_kill_and_term_ignoring_payload(tmp_path, make):
    plugin = make()
    polite, stubborn = plugin.submit(
        [
            spec(tmp_path, 5, ["sleep", "60"], walltime=2),
            spec(tmp_path, 6, ["bash", "-c", "trap '' TERM; sleep 60 & wait; sleep 60"], walltime=2),
        ]
    )
    status = wait_terminal(plugin, polite.batch_id, 20)
    assert status.state is BatchState.TIMEOUT and status.exit_code == 124
    assert 1.5 < status.end_time - status.start_time < 10
    status = wait_terminal(plugin, stubborn.batch_id, 30)  # TERM ignored: KILL after the grace period
    assert status.state is BatchState.TIMEOUT
    left = session_left(tmp_path / "w6")
    assert left == [], f"processes outlived the walltime: {left}"


def test_missing_access_point(tmp_path, make):
    assert make().status([f"local:{tmp_path}/nowhere"])[f"local:{tmp_path}/nowhere"].state is BatchState.MISSING


def wait_settled(ap: Path, limit: float = 15) -> list[list[str]] | None:
    """Waits until the worker's session is empty (its wrapper writes its pid first thing, whatever comes after)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and session_left(ap) != []:
        time.sleep(0.05)
    return session_left(ap)


class HeldStart(CommandRunner):
    """Holds the wrapper's start (`setsid -f ...`) until the test lets it go: the cancel can land before it."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[tuple[str, ...], str | None]] = []

    def run(self, argv, *, stdin=None, timeout=30.0, cwd=None, failure_expected=False) -> CommandResult:
        if argv[0] == "setsid":
            self.held.append((tuple(argv), cwd))
            return CommandResult(tuple(argv), stdin, "", "", 0, 0.0)
        return super().run(argv, stdin=stdin, timeout=timeout, cwd=cwd, failure_expected=failure_expected)

    def release(self) -> None:
        for argv, cwd in self.held:
            assert CommandRunner().run(argv, cwd=cwd).ok
        self.held.clear()


def test_a_cancel_before_the_wrapper_starts_never_runs_the_payload(tmp_path, queue_factory):
    runner = HeldStart()
    q = queue_factory(name="laptop", batch="local", launcher="mpirun")
    plugin = LocalPlugin(q, runner, registry=tmp_path / "registry")
    [res] = plugin.submit([spec(tmp_path, 7, ["bash", "-c", "touch ran; sleep 60"])])
    assert plugin.status([res.batch_id])[res.batch_id].state is BatchState.QUEUED
    assert plugin.cancel([res.batch_id]) == {res.batch_id: None}  # nothing runs yet: only the mark is left
    runner.release()  # the wrapper starts now, after the cancel (a loaded machine starting it late)
    assert wait_settled(tmp_path / "w7") == []
    status = plugin.status([res.batch_id])[res.batch_id]
    assert status.state is BatchState.CANCELLED and status.exit_code == 143  # the wrapper's own answer
    assert not (tmp_path / "w7" / "ran").exists(), "the payload ran"  # it runs in its access point


def test_a_cancel_racing_the_start_leaves_no_process(tmp_path, make):
    """Right after submit the wrapper may or may not have passed its check of the cancel mark (the machine's
    scheduling decides): either way nothing of the worker is left running."""
    plugin = make()
    [res] = plugin.submit([spec(tmp_path, 8, ["bash", "-c", "sleep 60 & wait"])])
    assert plugin.cancel([res.batch_id]) == {res.batch_id: None}
    # (a wrapper that starts just after the cancel shows RUNNING for the moment it takes to see the mark)
    assert wait_settled(tmp_path / "w8") == [], "processes outlived the cancel"
    assert plugin.status([res.batch_id])[res.batch_id].state is BatchState.CANCELLED


def test_a_worker_ending_while_its_status_is_read_is_finished_not_lost(tmp_path, make, monkeypatch):
    """The wrapper writes its exit file, then ends: a status read that sees it ended must see that file too."""
    plugin = make()
    [res] = plugin.submit([spec(tmp_path, 9, ["sleep", "60"])])
    wait_running(plugin, res.batch_id)
    ap = tmp_path / "w9"

    def ends_now(path: Path) -> None:  # the wrapper finishes just as the liveness is checked
        (path / "local.exit").write_text("0\n")
        return None

    monkeypatch.setattr(LocalPlugin, "_alive", staticmethod(ends_now))
    status = plugin.status([res.batch_id])[res.batch_id]
    assert status.state is BatchState.FINISHED and status.exit_code == 0, status
    monkeypatch.undo()
    (ap / "local.exit").unlink()  # the real worker still runs: end it
    plugin.cancel([res.batch_id])
    assert wait_settled(ap) == []
