"""The scale simulation: the real agents at virtual time against a synthetic batch system, central and pilots."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

from click.testing import CliRunner

from harvester_edge.replay.cli import simulate_command
from harvester_edge.replay.sim import Simulation, running_for, scale_point, site_config
from harvester_edge.replay.synthetic import Behaviour


def test_failures_and_walltime_kills_still_finish_every_range_once(tmp_path):
    behaviour = Behaviour(queue_wait=30, fail_rate=0.2, kill_rate=0.2, ranges=300, jobs=2, seed=5)
    sim = Simulation(tmp_path, behaviour, site_config(tmp_path, max_running=10, max_queued=5))
    result = sim.run()
    assert result.ranges_done == 300 and not sim.world.running
    states = {job.state for job in sim.world.jobs.values()}
    assert {"EXIT", "TIMEOUT", "DONE"} <= states  # failures at start and walltime kills did happen
    with sqlite3.connect(tmp_path / "harvester.db") as conn:
        finished = conn.execute("SELECT first_event FROM event_ranges WHERE state = 'finished'").fetchall()
        workers = dict(conn.execute("SELECT state, count(*) FROM workers GROUP BY state").fetchall())
    assert len(finished) == len(set(finished)) == 300  # each range finished once in the harvester's books
    assert workers.get("failed", 0) >= 1 and result.workers == sum(workers.values())
    assert result.virtual_seconds > 10 * result.real_seconds  # virtual time: no sleeping


def test_simulate_command_prints_table_and_json_last(tmp_path):
    out = CliRunner().invoke(
        simulate_command,
        ["--workers", "20,40", "--queue-wait", "20", "--max-running", "20", "--work-dir", str(tmp_path)],
    )
    assert out.exit_code == 0, out.output
    last = json.loads(out.output.strip().splitlines()[-1])
    assert [p["workers"] >= 1 for p in last["points"]] == [True, True]
    assert [p["ranges_done"] for p in last["points"]] == [200, 400]
    assert last["ratios"][0]["from"] <= last["ratios"][0]["to"]
    lines = out.output.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["workers"])
    assert "harvester_cpu_s" in lines[header] and "db_mb" in lines[header]
    assert [int(line.split()[0]) for line in lines[header + 1 : header + 3]] == [p["workers"] for p in last["points"]]


def test_simulate_work_dir_missing_or_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    for given, says in ((tmp_path / "missing", "does not exist"), (tmp_path / "a-file", "is a file")):
        proc = subprocess.run(
            [sys.executable, "-m", "harvester_edge", "simulate", "--workers", "10", "--work-dir", str(given)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"Invalid value for '--work-dir': Directory '{given}' {says}" in proc.stderr
    assert not (tmp_path / "missing").exists()


def test_every_size_gives_its_workers_the_same_work(tmp_path):
    """scale_point's concurrency grows with the size (running_for), so the task's last wave is the same share of
    the workers at every size: the ranges per worker (what cpu_ms_per_worker compares) stay the same. With the
    same concurrency at both sizes the smaller one's workers do visibly fewer ranges each (issue 15)."""
    behaviour = Behaviour(queue_wait=60, fail_rate=0.02, kill_rate=0.02)
    small, large = (scale_point(n, tmp_path, behaviour).row() for n in (600, 2400))
    assert (small["max_running"], large["max_running"]) == (running_for(600), running_for(2400)) == (3, 12)
    assert small["ranges_done"] == 6000 and large["ranges_done"] == 24000
    assert 9 <= small["ranges_per_worker"] <= 12 and 9 <= large["ranges_per_worker"] <= 12
    assert abs(large["ranges_per_worker"] / small["ranges_per_worker"] - 1) <= 0.05
    # the old way, one concurrency for every size: 600 workers at 120 running (as 1,000 at 200) are ~5 waves, and
    # the task's end leaves a visibly larger share of them with few or no ranges
    fixed = scale_point(600, tmp_path / "fixed", behaviour, max_running=120).row()
    assert fixed["ranges_per_worker"] < 0.95 * large["ranges_per_worker"]
