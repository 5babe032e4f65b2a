"""End-to-end harness: a site config in tmp_path, the real daemon as a process, tasks through the real CLI.

Exactly-once is checked from the central service's own database (every range finished once, none left) and by
recomputing outputs of the numpy payload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import kill_local_workers, sleep_task
from pgcluster import ReadConn

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "harvester_edge"]


def slurm_env() -> dict[str, str]:
    """SLURM_CONF of the local cluster (started by scripts/test); under CI a missing cluster is a failure."""
    conf = os.environ.get("SLURM_CONF")
    if not conf and shutil.which("sbatch"):
        out = subprocess.run(
            [str(REPO / "scripts" / "slurm-cluster"), "up"], capture_output=True, text=True, timeout=300
        )
        for line in out.stdout.splitlines():
            if line.startswith("export SLURM_CONF="):
                conf = line.split("=", 1)[1].strip().strip("'\"")
    if not conf:
        if os.environ.get("CI"):
            pytest.fail("the local Slurm cluster is not available (scripts/slurm-cluster up failed) and CI=true")
        pytest.skip("no local Slurm cluster (run scripts/slurm-cluster up)")
    return {"SLURM_CONF": conf}


class Site:
    def __init__(
        self,
        root: Path,
        queue: dict,
        central: dict | None = None,
        env: dict | None = None,
        agents: dict | None = None,
        daemon: dict | None = None,
        paths: dict | None = None,
        extra_queues: list[dict] | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.work = root / "work"
        self.config_path = root / "site.yaml"
        db = (central or {}).get("db")
        self.central_url: str | None = db if isinstance(db, str) and db.startswith("postgresql://") else None
        config = {
            "site": "t",
            "central": central or {"mode": "embedded", "trusted": True},
            "queues": [{"name": "q", **queue}, *(extra_queues or [])],
            "paths": {"work_dir": str(self.work), **(paths or {})},
            "agents": agents
            or {
                "fetcher": "1s",
                "submitter": "1s",
                "monitor": "1s",
                "feeder": "0.3s",
                "propagator": "0.5s",
                "sweeper": "2s",
            },
            "daemon": {"stop_timeout": "15s", "lease_time": "30s", **(daemon or {})},
        }
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, **(env or {})}
        self.env.pop("HARVESTER_EDGE_WORK_DIR", None)
        self.daemon: subprocess.Popen | None = None

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*CLI, "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"harvester-edge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def submit_task(self, **task) -> int:
        path = self.root / f"task-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(task))
        return int(json.loads(self.cli("task", "submit", str(path), "--json").stdout)["task_id"])

    def task(self, task_id: int) -> dict:
        return json.loads(self.cli("task", "show", str(task_id), "--json").stdout)

    def start(self) -> None:
        log = open(self.root / "daemon.out", "ab")
        self.daemon = subprocess.Popen(
            [*CLI, "--config", str(self.config_path), "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self, timeout: float = 30) -> int:
        if self.daemon is None:
            return 0
        self.daemon.send_signal(signal.SIGTERM)
        code = self.daemon.wait(timeout)
        self.daemon = None
        return code

    def kill(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
            self.daemon.wait(10)
            self.daemon = None

    def wait_task(self, task_id: int, timeout: float, until=("finished", "failed", "aborted")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task["status"] in until:
                return task
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited with {self.daemon.returncode}: {self.log_tail()}")
            time.sleep(1)
        raise AssertionError(
            f"task {task_id} not done after {timeout}s: {self.task(task_id)['ranges']}\n{self.log_tail()}"
        )

    def wait_workers_ended(self, timeout: float = 120) -> list[tuple]:
        """(id, state, batch_state) of every worker once none is active: a pilot ends after its final report,
        so the monitor sees it a little after the task is done."""
        deadline = time.monotonic() + timeout
        while True:
            with self.harvester_db() as conn:
                workers = conn.execute("SELECT id, state, batch_state FROM workers ORDER BY id").fetchall()
            if all(state not in ("new", "submitting", "queued", "running") for _, state, _ in workers):
                return workers
            if time.monotonic() > deadline:
                raise AssertionError(f"workers still active after {timeout}s: {workers}\n{self.log_tail()}")
            time.sleep(1)

    def log_tail(self, n: int = 40) -> str:
        log = self.work / "logs" / "harvester-edge.log"
        return "\n".join(log.read_text().splitlines()[-n:]) if log.exists() else "(no log)"

    def central_db(self) -> Any:
        """The central DB read-only: the SQLite file, or (central.db: postgresql://...) that database, both taking
        SQLite text (pgcluster.ReadConn)."""
        if self.central_url is not None:
            return ReadConn(self.central_url)
        return sqlite3.connect(f"file:{self.work / 'central.db'}?mode=ro", uri=True)

    def harvester_db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.work / 'harvester.db'}?mode=ro", uri=True)

    def assert_exactly_once(self, task_id: int, n_events: int) -> None:
        """Every event of the task is in exactly one finished range of the central service, none is left open."""
        with self.central_db() as conn:
            rows = conn.execute(
                "SELECT start_event, last_event, status FROM ranges WHERE task_id = ?", (task_id,)
            ).fetchall()
        finished = sorted((a, b) for a, b, status in rows if status == 3)
        covered = [ev for a, b in finished for ev in range(a, b + 1)]
        assert len(covered) == len(set(covered)) == n_events, "an event is missing or was finished twice"
        assert sorted(covered) == list(range(1, n_events + 1))  # the service numbers events from 1

    def outputs(self) -> list[tuple[Path, int, int]]:
        """(output path, first event, last event) of every finished range the pilots reported (harvester's DB)."""
        with self.harvester_db() as conn:
            rows = conn.execute(
                "SELECT result, first_event, last_event FROM event_ranges WHERE state = 'finished'"
            ).fetchall()
        return [(Path(json.loads(r[0])["path"]), r[1], r[2]) for r in rows if r[0]]

    def cleanup(self) -> None:
        try:
            self.kill()
        finally:
            kill_local_workers(self.work)


@pytest.fixture
def make_site(tmp_path):
    sites: list[Site] = []

    def make(**kwargs) -> Site:
        site = Site(tmp_path / f"site{len(sites)}", **kwargs)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.cleanup()


def numpy_task(events: int, per_range: int = 20, attempts: int = 3, **payload_args) -> dict:
    return {
        "name": f"t{events}",
        "payload": {
            "kind": "python",
            "callable": "jumbo.payloads:simulate",
            "args": {"size": 32, "rounds": 1, **payload_args},
        },
        "events": events,
        "events_per_range": per_range,
        "seconds_per_event": 0.01,
        "memory_per_rank_mb": 200,
        "max_attempts": attempts,
        "jobs": 1,
    }


@pytest.fixture
def tasks():
    """Task definitions for tests: tasks.numpy(events, ...), tasks.sleep(events, seconds_per_event)."""
    import types

    return types.SimpleNamespace(numpy=numpy_task, sleep=sleep_task)


@pytest.fixture(scope="session")
def slurm_conf() -> dict[str, str]:
    """The environment that points Slurm's commands at the local test cluster."""
    return slurm_env()


@pytest.fixture
def private_slurm(slurm_conf):
    """A 2-node cluster of this test's own (own dir and ports), for tests that stop its controller: the shared
    cluster other tests use is never disturbed. Yields (env, cluster command runner)."""
    import socket
    import tempfile

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    env = dict(
        os.environ,
        HE_SLURM_DIR=tempfile.mkdtemp(prefix="he-slurm-agents-"),
        HE_SLURM_NODES="2",
        HE_SLURM_CTLD_PORT=str(free_port()),
        HE_SLURM_NODE_PORT_BASE=str(free_port() - 1),
    )
    script = str(REPO / "scripts" / "slurm-cluster")

    def cluster(*args: str) -> str:
        res = subprocess.run([script, *args], capture_output=True, text=True, timeout=180, env=env)
        assert res.returncode == 0, f"slurm-cluster {args}: {res.stderr[-2000:]}"
        return res.stdout

    conf = cluster("up").strip().splitlines()[-1].split("=", 1)[1].strip("'\"")
    try:
        yield {"SLURM_CONF": conf}, cluster
    finally:
        cluster("down")
        shutil.rmtree(env["HE_SLURM_DIR"], ignore_errors=True)
