"""Fixtures for the batch tier: the real local Slurm (scripts/slurm-cluster), queue configs, the command seam.

Tests that need Slurm or MPI FAIL (not skip) when CI=true and the thing is missing; without CI they skip.
The cluster is found through the `export SLURM_CONF=...` line that `scripts/slurm-cluster up` prints last.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harvester_edge.config import QueueConfig
from harvester_edge.seams.commands import CommandRunner
from helpers import need

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "scripts" / "slurm-cluster"
DATA = Path(__file__).resolve().parent / "data"


def cluster(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    need(shutil.which("bash") is not None, "bash is needed for scripts/slurm-cluster")
    res = cluster("up")
    lines = [l for l in res.stdout.splitlines() if l.startswith("export SLURM_CONF=")]
    need(
        res.returncode == 0 and bool(lines),
        f"cannot start the local Slurm (scripts/slurm-cluster up exit {res.returncode}): {res.stderr[-2000:]}",
    )
    return lines[-1].split("=", 1)[1]


@pytest.fixture(scope="session")
def slurm_runner(slurm_conf: str) -> CommandRunner:
    return CommandRunner(env={"SLURM_CONF": slurm_conf})


@pytest.fixture(scope="session")
def mpi4py_ok() -> None:
    try:
        import mpi4py
    except ImportError:
        need(False, "mpi4py is not installed (pip install mpi4py)")
    need(shutil.which("mpirun") is not None, "mpirun is not installed (apt-get install openmpi-bin)")


def make_queue(**overrides) -> QueueConfig:
    values = dict(
        name="debug",
        batch="slurm",
        partition="debug",
        nodes_max=4,
        ranks_per_node=1,
        cores_per_node=1,
        walltime_min=60,
        walltime_max=3600,
        launcher="srun",
        drain_warning=30,
        command_timeout=30,
    )
    values.update(overrides)
    return QueueConfig(**values)


@pytest.fixture
def queue_factory():
    """make_queue as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    return make_queue
