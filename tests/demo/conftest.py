"""Run `harvester-edge demo` as a real process on configs/local.yaml with a work dir in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import kill_local_workers

REPO = Path(__file__).resolve().parents[2]
# `harvester-edge demo`, registering the command when the main CLI does not (yet) have it
ENTRY = (
    "from harvester_edge.cli import cli, main\nfrom harvester_edge.demo import demo\n"
    "cli.commands.get('demo') or cli.add_command(demo)\nmain()"
)


def require_mpi() -> None:
    """mpirun and mpi4py must be there; under CI their absence is a failure, not a skip."""
    missing = [] if shutil.which("mpirun") else ["mpirun"]
    try:
        import mpi4py
    except ImportError:
        missing.append("mpi4py")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{' and '.join(missing)} missing and CI=true: run scripts/setup")
        pytest.skip(f"{' and '.join(missing)} missing (run scripts/setup)")


class DemoRun:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.env = {**os.environ, "HE_LOCAL_BATCH_DIR": str(root / "registry")}
        self.env.pop("HARVESTER_EDGE_WORK_DIR", None)
        self.env.pop("HARVESTER_EDGE_CONFIG", None)

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            ENTRY,
            "--config",
            str(REPO / "configs" / "local.yaml"),
            "demo",
            "--work-dir",
            str(self.work),
            *args,
        ]

    def task_file(self, task: dict) -> Path:
        path = self.root / f"{task['name']}.yaml"
        path.write_text(yaml.safe_dump(task))
        return path

    def run(self, *args: str, timeout: float = 240) -> tuple[int, dict | None, str]:
        proc = subprocess.run(
            self.argv("--json", *args),
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            cwd=self.root,
            timeout=timeout,
        )
        lines = proc.stdout.strip().splitlines()
        summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        return proc.returncode, summary, proc.stderr

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*args),
            stdout=open(self.root / "demo.out", "wb"),
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root,
        )

    def central(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.work / 'central.db'}?mode=ro", uri=True)

    def cleanup(self) -> None:
        """Stop worker process trees this test started (their pids are in each access point)."""
        kill_local_workers(self.work)


@pytest.fixture
def demo_run(tmp_path):
    run = DemoRun(tmp_path)
    yield run
    run.cleanup()


def numpy_task(events: int, per_range: int = 20, attempts: int = 3, payload: dict | None = None) -> dict:
    return {
        "name": f"demo-test-{events}",
        "events": events,
        "events_per_range": per_range,
        "seconds_per_event": 0.01,
        "memory_per_rank_mb": 200,
        "max_attempts": attempts,
        "jobs": 1,
        "payload": payload
        or {"kind": "python", "callable": "jumbo.payloads:simulate", "args": {"size": 32, "rounds": 1}},
    }
