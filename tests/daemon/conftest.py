"""Process-level harness for the daemon: a site config in tmp_path, real `harvester-edge` processes, real files.

Every process a test starts is stopped by pid when the test ends: the daemon (by the pid in its lock file or its
Popen handle) and the local workers (process trees whose session leader's pid is in <access point>/local.pid).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from harvester_edge.states import JobState, OutboxState, RangeState, WorkerState
from helpers import FAST_AGENTS, kill_local_workers, local_queue, sleep_task, wait_gone

CLI = [sys.executable, "-m", "harvester_edge"]

LOCAL_QUEUE = local_queue()

# the legal values of every state column (harvester_edge.states), checked after crashes
LEGAL = {
    "jobs": {s.value for s in JobState},
    "workers": {s.value for s in WorkerState},
    "event_ranges": {s.value for s in RangeState},
    "outbox": {s.value for s in OutboxState},
}


def site_config(work: Path, queue: dict | None = None, **over) -> dict:
    """A site of one local queue `q` (LOCAL_QUEUE updated with `queue`); `over` replaces top-level sections."""
    config = {
        "site": "t",
        "central": {"mode": "embedded", "trusted": True},
        "queues": [{**LOCAL_QUEUE, **(queue or {})}],
        "paths": {"work_dir": str(work)},
        "agents": dict(FAST_AGENTS),
        "daemon": {"stop_timeout": "10s", "lease_time": "30s"},
    }
    config.update(over)
    return config


class Site:
    """One site: its config file, work dir, local batch registry, and the processes started for it."""

    def __init__(self, root: Path, **config_over) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.work = root / "work"
        self.config_path = root / "site.yaml"
        self.write_config(site_config(self.work, **config_over))
        self.env = {
            **os.environ,
            "HARVESTER_EDGE_WORK_DIR": str(self.work),
            "HE_LOCAL_BATCH_DIR": str(root / "local-batch"),
        }
        self.env.pop("HARVESTER_EDGE_CONFIG", None)
        self.popen: subprocess.Popen | None = None
        self.pids: set[int] = set()  # every daemon pid seen, stopped at cleanup if still alive

    # -- files ----------------------------------------------------------------------------------------------
    def write_config(self, config: dict, path: Path | None = None) -> Path:
        path = path or self.config_path
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def read_config(self) -> dict:
        return yaml.safe_load(self.config_path.read_text())

    @property
    def log_path(self) -> Path:
        return self.work / "logs" / "harvester-edge.log"

    @property
    def lock_path(self) -> Path:
        return self.work / "daemon.lock"

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:]) or "(no log)"

    def wait_log(self, pattern: str, timeout: float = 30, count: int = 1) -> None:
        """Wait until `pattern` (a regex) occurs `count` times in the log file."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.log_text())) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no log line matching {pattern!r} (x{count}) after {timeout}s:\n{self.log_tail()}"
                )
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.popen.returncode}) before logging {pattern!r}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    # -- commands -------------------------------------------------------------------------------------------
    def argv(self, *args: str, config: Path | None = None) -> list[str]:
        return [*CLI, "--config", str(config or self.config_path), *args]

    def cli(
        self, *args: str, config: Path | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.argv(*args, config=config), capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"harvester-edge {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def start_run(self) -> subprocess.Popen:
        """`harvester-edge run` in the foreground, as a child of the test (its exit code is observable)."""
        with open(self.root / "run.out", "ab") as out:  # the child keeps its own copy of the descriptor
            self.popen = subprocess.Popen(self.argv("run"), env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.pids.add(self.popen.pid)
        return self.popen

    def cron(self, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.cli("cron", timeout=timeout)

    def lock_pid(self) -> int | None:
        try:
            return int(self.lock_path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def wait_daemon(self, not_pid: int | None = None, timeout: float = 30) -> int:
        """The pid of a live daemon (other than `not_pid`) once it holds the lock file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.lock_pid()
            if pid and pid != not_pid and psutil.pid_exists(pid) and _is_ours(pid, self.config_path):
                self.pids.add(pid)
                return pid
            time.sleep(0.05)
        raise AssertionError(f"no daemon holds {self.lock_path} after {timeout}s:\n{self.log_tail()}")

    def daemon_processes(self) -> list[int]:
        """Live processes (not zombies) started with this site's config as `run` or `cron`."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                cmd = proc.info["cmdline"] or []
                if (
                    proc.info["status"] != psutil.STATUS_ZOMBIE
                    and str(self.config_path) in cmd
                    and ("cron" in cmd or "run" in cmd)
                ):
                    found.append(proc.info["pid"])
            except psutil.Error:
                continue
        return found

    def task_submit(self, task: dict) -> int:
        path = self.root / f"task-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(task))
        return int(json.loads(self.cli("task", "submit", str(path), "--json").stdout)["task_id"])

    def task_show(self, task_id: int) -> dict:
        return json.loads(self.cli("task", "show", str(task_id), "--json").stdout)

    def task_status(self, task_id: int) -> str:
        """Straight from the central DB (no CLI start-up): cheap enough to ask between two kills."""
        with self.central_db() as conn:
            return conn.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()[0]

    def events_finished(self, task_id: int) -> int:
        with self.central_db() as conn:
            return conn.execute(
                "SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges WHERE task_id = ? AND status = 3",
                (task_id,),
            ).fetchone()[0]

    def wait_task(self, task_id: int, timeout: float, until=("finished", "failed", "aborted")) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task_show(task_id)
            if task["status"] in until:
                return task
            time.sleep(0.5)
        raise AssertionError(f"task {task_id} not done after {timeout}s: {self.task_show(task_id)}\n{self.log_tail()}")

    # -- databases (read-only) ------------------------------------------------------------------------------
    def harvester_db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.work / 'harvester.db'}?mode=ro", uri=True, timeout=10)

    def central_db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.work / 'central.db'}?mode=ro", uri=True, timeout=10)

    def held_leases(self) -> dict[str, int]:
        with self.harvester_db() as conn:
            return {
                table: conn.execute(f"SELECT count(*) FROM {table} WHERE lease_owner IS NOT NULL").fetchone()[0]
                for table in ("workers", "jobs", "event_ranges")
            }

    def assert_db_sound(self, context: object = "") -> None:
        """The harvester DB (if there is one yet) passes integrity_check and holds only legal states."""
        if not (self.work / "harvester.db").exists():
            return
        with self.harvester_db() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", context
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], context
            for table, legal in LEGAL.items():
                states = {row[0] for row in conn.execute(f"SELECT DISTINCT state FROM {table}")}
                assert states <= legal, f"{context}: {table}: illegal states {states - legal}"

    def assert_consistent(self) -> None:
        """After a clean stop: the DB is sound, no worker is left in 'submitting', batch ids are known."""
        assert (self.work / "harvester.db").exists()
        self.assert_db_sound()
        with self.harvester_db() as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM workers WHERE state = ?", (WorkerState.SUBMITTING.value,)
                ).fetchone()[0]
                == 0
            )
            # a worker the batch system holds has its batch id
            assert (
                conn.execute(
                    "SELECT count(*) FROM workers WHERE state IN ('queued', 'running') AND batch_id IS NULL"
                ).fetchone()[0]
                == 0
            )

    def assert_exactly_once(self, task_id: int, n_events: int) -> None:
        """From the central service's own DB: every event in exactly one finished range (status 3), none twice."""
        with self.central_db() as conn:
            rows = conn.execute(
                "SELECT start_event, last_event FROM ranges WHERE task_id = ? AND status = 3", (task_id,)
            ).fetchall()
        covered = [event for first, last in rows for event in range(first, last + 1)]
        assert len(covered) == len(set(covered)), "an event was finished twice"
        assert sorted(covered) == list(range(1, n_events + 1)), "an event was never finished"  # numbered from 1

    # -- stopping -------------------------------------------------------------------------------------------
    def stop_pid(self, pid: int, timeout: float = 30) -> float:
        """SIGTERM a daemon by pid and wait for it to go; returns how long it took."""
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid, timeout)
        return time.monotonic() - started

    def kill_pid(self, pid: int, timeout: float = 10) -> None:
        """SIGKILL a daemon by pid (crash tests) and wait for it to go."""
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, timeout)

    def cleanup(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        for pid in self.pids:
            if psutil.pid_exists(pid) and _is_ours(pid, self.config_path):
                os.kill(pid, signal.SIGKILL)
        kill_local_workers(self.work)


def _is_ours(pid: int, config_path: Path) -> bool:
    """Guard against a reused pid: the process must have been started with this site's config."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and str(config_path) in proc.cmdline()
    except psutil.Error:
        return False


class BlackHole:
    """A TCP server on loopback that accepts connections and reads requests but never answers: every HTTP call
    to it lasts until the client's timeout, so an agent cycle that calls it is a long-running cycle."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests = threading.Event()  # set once a request's bytes arrived
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="black-hole", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            conn.settimeout(5)
            try:
                if conn.recv(65536):
                    self.requests.set()
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def make_site(tmp_path):
    sites: list[Site] = []

    def make(name: str = "site", **config_over) -> Site:
        site = Site(tmp_path / f"{name}{len(sites)}", **config_over)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.cleanup()


@pytest.fixture
def tasks():
    """Task definitions: tasks.sleep(events, seconds_per_event, per_range)."""
    import types

    return types.SimpleNamespace(sleep=sleep_task)


@pytest.fixture
def black_hole():
    server = BlackHole()
    yield server
    server.close()
