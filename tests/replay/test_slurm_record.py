"""Record the real daemon against the local Slurm cluster (real sbatch/squeue/sacct, real jumbo pilots under srun),
then replay the trace with no Slurm at all: the same calls, no divergence, far faster than it was recorded.

Set REPLAY_SAVE_TRACE=<path> to keep the recorded trace (that is how tests/replay/traces/slurm.jsonl.gz was made).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harvester_edge.replay import trace
from harvester_edge.replay.replayer import replay

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]

CLI = [sys.executable, "-m", "harvester_edge"]


def site_config(root: Path) -> Path:
    config = {
        "site": "rec",
        "central": {"mode": "embedded", "trusted": True},
        "queues": [
            {
                "name": "q",
                "batch": "slurm",
                "partition": "debug",
                "nodes_min": 1,
                "nodes_max": 1,
                "ranks_per_node": 2,
                "cores_per_node": 2,
                "walltime_min": "1m",
                "walltime_max": "5m",
                "max_queued_workers": 1,
                "max_running_workers": 1,
                "launcher": "srun",
                "mpi_type": "pmix",
                "drain_warning": "15s",
                "env_setup": ["export OMPI_MCA_btl=^vader", "export OMPI_MCA_btl_tcp_if_include=lo"],
            }
        ],
        "paths": {"work_dir": str(root / "work")},
        "agents": {
            "fetcher": "1s",
            "submitter": "1s",
            "monitor": "1s",
            "feeder": "0.5s",
            "propagator": "1s",
            "sweeper": "5s",
        },
        "daemon": {"threads": 1, "stop_timeout": "15s", "lease_time": "60s"},
    }
    path = root / "site.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(config: Path, env: dict, *args: str) -> str:
    proc = subprocess.run([*CLI, "--config", str(config), *args], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_record_real_slurm_run_and_replay_it(tmp_path, slurm_conf):
    try:
        import mpi4py
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("mpi4py is needed for the pilots (CI=true: this tier must run)")
        pytest.skip("mpi4py is not installed")
    env = {**os.environ, "SLURM_CONF": slurm_conf}
    env.pop("HARVESTER_EDGE_WORK_DIR", None)
    config = site_config(tmp_path)
    task = tmp_path / "task.yaml"
    task.write_text(
        yaml.safe_dump(
            {
                "name": "rec",
                "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.01}},
                "events": 200,
                "events_per_range": 20,
                "seconds_per_event": 0.01,
                "memory_per_rank_mb": 100,
                "max_attempts": 3,
                "jobs": 1,
            }
        )
    )
    task_id = json.loads(cli(config, env, "task", "submit", str(task), "--json"))["task_id"]
    path = tmp_path / "slurm.jsonl.gz"
    log = open(tmp_path / "daemon.out", "wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "harvester_edge", "--config", str(config), "run", "--record", str(path), "--for", "300"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline:
            status = json.loads(cli(config, env, "task", "show", str(task_id), "--json"))["status"]
            if status in ("finished", "failed", "aborted"):
                break
            assert daemon.poll() is None, (tmp_path / "daemon.out").read_text()[-3000:]
            time.sleep(1)
        assert status == "finished", (tmp_path / "daemon.out").read_text()[-3000:]
        time.sleep(3)  # a few idle cycles after the end belong to the recording too
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        log.close()
    head, records = trace.read_trace(path)
    kinds = {r["kind"] for r in records}
    argv0 = {r["argv"][0] for r in records if r["kind"] == "command"}
    ops = {r["op"] for r in records if r["kind"] == "file"}
    assert kinds == {"cycle", "command", "http", "file"}
    assert {"sbatch", "squeue"} <= argv0
    assert {"pending", "load_event_request", "load_event_status", "write_event_ranges"} <= ops
    report = replay(path)
    assert report.ok, report.render()
    assert report.calls == sum(1 for r in records if r["kind"] != "cycle" and r.get("cycle"))
    assert report.real_seconds < report.virtual_seconds
    if os.environ.get("REPLAY_SAVE_TRACE"):
        shutil.copy(path, os.environ["REPLAY_SAVE_TRACE"])
