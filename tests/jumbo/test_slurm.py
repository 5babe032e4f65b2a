"""The pilot inside the real local Slurm (scripts/slurm-cluster): sbatch, then srun --mpi=pmix on 2 nodes x 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jumbo import protocol

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")


@pytest.fixture(scope="module")
def slurm(h):
    script = ROOT / "scripts" / "slurm-cluster"
    h.require(script.exists(), "scripts/slurm-cluster")
    h.require(shutil.which("sbatch") is not None, "Slurm (sbatch)")
    proc = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=180, check=False)
    h.require(proc.returncode == 0, f"a running local Slurm (slurm-cluster up said: {proc.stderr[-500:]})")
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("export SLURM_CONF="), line
    return {**os.environ, "SLURM_CONF": line.split("=", 1)[1].strip()}


def job_state(env: dict, job_id: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30, check=False, env=env
    ).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


def submit(env: dict, tmp_path: Path, ap: Path) -> str:
    script = tmp_path / "pilot.sh"
    script.write_text(f"#!/bin/bash\nexec srun --mpi=pmix --export=ALL -N 2 -n 4 {sys.executable} -m jumbo --ap {ap}\n")
    sub = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-N",
            "2",
            "-n",
            "4",
            "--time=5",
            "--job-name=jumbo-test",
            f"--output={tmp_path}/slurm-%j.out",
            f"--chdir={tmp_path}",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert sub.returncode == 0, sub.stderr
    return sub.stdout.strip().split(";")[0]


def wait_done(env: dict, job_id: str, tmp_path: Path, timeout: float = 150) -> str:
    end = time.time() + timeout
    state = job_state(env, job_id)
    while not state.startswith(TERMINAL) and state != "GONE" and time.time() < end:
        time.sleep(0.5)
        state = job_state(env, job_id)
    if time.time() >= end:
        subprocess.run(["scancel", job_id], env=env, timeout=30, check=False)
    log = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert state in ("COMPLETED", "GONE"), f"{state}\n{log[-3000:]}"
    return log


@pytest.fixture
def env(slurm, mpi):
    # fake nodes share one /dev/shm (vader crashes or hangs) and one host (TCP over loopback only)
    return {**slurm, "OMPI_MCA_btl": "^vader", "OMPI_MCA_btl_tcp_if_include": "lo"}


def test_pilot_on_two_slurm_nodes_exactly_once(env, ap, h, tmp_path):
    ranges = h.make_ranges(77, 1001, 24, per_range=5)
    h.write_spec(ap, [h.sim_job()], n_ranges=4)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        log = wait_done(env, submit(env, tmp_path, ap), tmp_path)
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids) == {r["eventRangeID"] for r in ranges} and set(ids.values()) == {1}, log[-3000:]
    assert len(harvester.by_status("finished")) == len(ranges), harvester.statuses  # reported once, and finished
    h.check_finished(harvester.by_status("finished"), 77)
    report = protocol.read_job_report(ap)
    assert report["ranks"] == 4
    assert len({m["node"] for m in report["perRank"].values()}) == 2  # really two Slurm nodes


def test_slurm_signal_drains_the_pilot(env, ap, h, tmp_path):
    """scancel --signal=USR1 (what sbatch --signal=USR1@T sends before the walltime) drains all ranks."""
    ranges = h.make_ranges(77, 1001, 200, per_range=10)
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.02}},
    }
    h.write_spec(ap, [job], n_ranges=8)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        job_id = submit(env, tmp_path, ap)
        end = time.time() + 120
        while len(harvester.by_status("finished")) < 4 and time.time() < end:
            time.sleep(0.1)
        assert harvester.by_status("finished"), "the pilot did not start under Slurm"
        subprocess.run(["scancel", "--signal=USR1", job_id], env=env, timeout=30, check=True)
        log = wait_done(env, job_id, tmp_path)
    assert "drain" in protocol.read_worker_attributes(ap)["endReason"], log[-3000:]
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids.values()) == {1} and harvester.by_status("not-done") and not harvester.by_status("failed")
    handed = set(ids) | {r["eventRangeID"] for r in harvester.remaining[1001]}
    assert handed == {r["eventRangeID"] for r in ranges}  # every range is done or will be handed out again
