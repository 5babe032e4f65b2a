"""Fixtures for offline replay: the checked-in traces, a synthetic recording, and the local Slurm cluster.

Tests that need Slurm FAIL (not skip) when CI=true and the cluster is missing; without CI they skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import need

REPO = Path(__file__).resolve().parents[2]
TRACES = Path(__file__).resolve().parent / "traces"


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    return TRACES


@pytest.fixture
def record_synthetic(tmp_path):
    """record(batch="lsf", **behaviour) -> path of a fresh trace of the real agents against a synthetic site."""
    from harvester_edge.replay.sim import Simulation, site_config
    from harvester_edge.replay.synthetic import Behaviour

    def record(batch: str = "lsf", name: str = "trace.jsonl", **behaviour) -> Path:
        work = tmp_path / f"site-{batch}-{name}"
        values = {"queue_wait": 20, "fail_rate": 0.1, "kill_rate": 0.1, "ranges": 60, "jobs": 1, "seed": 3}
        values.update(behaviour)
        path = tmp_path / name
        Simulation(
            work, Behaviour(**values), site_config(work, batch=batch, max_running=4, max_queued=2), record=path
        ).run()
        return path

    return record


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    need(shutil.which("sbatch") is not None, "Slurm is not installed (apt-get install slurm-client slurmd)")
    res = subprocess.run([str(REPO / "scripts" / "slurm-cluster"), "up"], capture_output=True, text=True, timeout=300)
    lines = [line for line in res.stdout.splitlines() if line.startswith("export SLURM_CONF=")]
    need(
        res.returncode == 0 and bool(lines),
        f"cannot start the local Slurm (scripts/slurm-cluster up exit {res.returncode}): {res.stderr[-2000:]}",
    )
    return lines[-1].split("=", 1)[1].strip().strip("'\"")
