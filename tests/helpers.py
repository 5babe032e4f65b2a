"""Helpers shared by the test folders (pytest puts tests/ on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml


def need(condition: bool, what: str) -> None:
    """Skip when `condition` is false; fail under CI=true, where every tier must run."""
    if condition:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} (CI=true: this tier must run)")
    pytest.skip(what)


def kill_local_workers(work: Path) -> None:
    """SIGKILL the process trees of the local workers a test started (their wrapper pids are in local.pid)."""
    for pid_file in Path(work).glob("workers/*/local.pid"):
        try:
            leader = psutil.Process(int(pid_file.read_text().strip()))
            if str(pid_file.parent) not in (leader.cwd() or ""):
                continue  # a reused pid: not our wrapper
            procs = leader.children(recursive=True) + [leader]
        except (psutil.Error, ValueError, OSError):
            continue
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)


def wait_gone(pid: int, timeout: float) -> None:
    """Wait for a process that is not necessarily our child (a daemonized grandchild) to exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still runs {timeout}s after the signal")


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", step: float = 0.1):
    """The predicate's first true value, polled every `step` seconds; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# agent intervals of a real daemon in the tests: short, so that a task runs through in seconds (a test that needs
# another agent or interval adds it: {**FAST_AGENTS, "paylogs": "0.5s"})
FAST_AGENTS = {
    "fetcher": "1s",
    "submitter": "0.5s",
    "monitor": "0.5s",
    "feeder": "0.3s",
    "propagator": "0.5s",
    "sweeper": "2s",
}


def local_queue(name: str | None = "q", **fields: object) -> dict:
    """A site-config queue on the local plugin: one node of 2 ranks under mpirun, 1-5 minute walltimes, at most one
    queued and two running workers; `fields` change or add keys (name=None leaves the name out)."""
    queue: dict = {
        "name": name,
        "batch": "local",
        "nodes_min": 1,
        "nodes_max": 1,
        "ranks_per_node": 2,
        "cores_per_node": 2,
        "walltime_min": "1m",
        "walltime_max": "5m",
        "max_queued_workers": 1,
        "max_running_workers": 2,
        "launcher": "mpirun",
    }
    if name is None:
        del queue["name"]
    queue.update(fields)
    return queue


def free_port() -> int:
    """A loopback port free right now (for a server the test starts next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def central_service_config(folder: Path, **central: object) -> tuple[Path, int]:
    """folder/central.yaml for a stand-alone central service on a free loopback port (trusted, its DB in folder
    unless `central` says otherwise): (the config's path, the port)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "central.yaml"
    settings = {"mode": "embedded", "host": "127.0.0.1", "port": port, "trusted": True, **central}
    config.write_text(
        yaml.safe_dump(
            {
                "site": "central",
                "queues": [{"name": "unused", "batch": "local"}],
                "paths": {"work_dir": str(folder)},
                "central": settings,
            }
        )
    )
    return config, port


def cli(config: Path) -> list[str]:
    """The harvester-edge command line on a config, as a subprocess runs it."""
    return [sys.executable, "-m", "harvester_edge", "--config", str(config)]


def serve_central(config: Path, *args: str) -> subprocess.Popen:
    """`harvester-edge central serve [args]` on that config; its output appended to serve.out beside it."""
    with open(config.parent / "serve.out", "ab") as out:
        return subprocess.Popen([*cli(config), "central", "serve", *args], stdout=out, stderr=subprocess.STDOUT)


def sleep_task(events: int, seconds_per_event: float, per_range: int = 10) -> dict:
    """The shape of configs/tasks/example.yaml, with the sleep payload (cheap, and a range takes known time)."""
    return {
        "name": f"sleep{events}",
        "payload": {
            "kind": "python",
            "callable": "jumbo.payloads:sleep",
            "args": {"seconds_per_event": seconds_per_event},
        },
        "events": events,
        "events_per_range": per_range,
        "seconds_per_event": seconds_per_event,
        "memory_per_rank_mb": 100,
        "max_attempts": 3,
        "jobs": 1,
    }
