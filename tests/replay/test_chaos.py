"""Chaos at scale: the daemon killed (SIGKILL-like) at random moments and restarted; nothing lost or doubled.

The accounting is the synthetic world's ground truth: batch jobs the batch system holds vs those the daemon knows,
jobs submitted twice for one worker, ranges the central service never saw finished or saw finished twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from harvester_edge.replay.chaos import KINDS, Chaos, Incarnation, Kill
from harvester_edge.replay.cli import simulate_command
from harvester_edge.replay.sim import Simulation, site_config
from harvester_edge.replay.synthetic import Behaviour
from harvester_edge.store import open_store


def chaos_run(work: Path, kills: int = 10, seed: int = 4, batch: str = "slurm") -> dict:
    """About 200 workers (2000 ranges of 10 events, 2 jumbo jobs), `kills` kills."""
    behaviour = Behaviour(queue_wait=60, fail_rate=0.02, kill_rate=0.02, ranges=2000, jobs=2)
    config = site_config(work, batch=batch, max_running=200, max_queued=100)
    result = Simulation(work, behaviour, config, kills=kills, kill_seed=seed).run()
    assert result.chaos is not None
    return result.chaos


def assert_nothing_lost_or_doubled(chaos: dict) -> None:
    assert chaos["kills"] == chaos["kills_planned"], chaos["kill_points"]
    assert chaos["workers_lost"] == 0, chaos["workers_lost_ids"]
    assert chaos["workers_doubled"] == 0 and chaos["workers_tracked_twice"] == 0
    assert chaos["workers_known"] == chaos["batch_jobs"] > 0
    assert chaos["ranges_lost"] == 0 and chaos["ranges_double_finished"] == 0
    assert chaos["ranges_finished"] + chaos["ranges_given_up"] == chaos["ranges_total"] == 2000
    assert chaos["ok"] is True


@pytest.mark.parametrize("seed", [4, 11])
def test_ten_kills_lose_and_double_nothing(tmp_path, seed):
    chaos = chaos_run(tmp_path, seed=seed)
    assert_nothing_lost_or_doubled(chaos)
    kinds = chaos["kills_by_kind"]
    # kills came at different kinds of moments: every kind (9 of them) once in 10 kills (they take turns)
    assert set(kinds) == set(KINDS) and sum(kinds.values()) == 10, kinds
    assert len(chaos["kills_by_agent"]) >= 3, chaos["kills_by_agent"]


def test_lsf_site_too(tmp_path):
    assert_nothing_lost_or_doubled(chaos_run(tmp_path, seed=5, batch="lsf"))


def test_a_broken_recovery_is_caught(tmp_path, monkeypatch):
    """The accounting can fail: an interrupted submission that is never looked up by name is submitted again."""

    def forgetful(self, names):  # recovery that does not find what sbatch made before the kill
        return {}

    monkeypatch.setattr("harvester_edge.plugins.slurm.SlurmPlugin.find_by_name", forgetful)
    chaos = chaos_run(tmp_path, seed=4)
    assert chaos["kills_by_kind"].get("submit:after", 0) >= 1
    assert chaos["workers_doubled"] >= 1 and chaos["ok"] is False


def test_a_killed_daemon_runs_nothing_after_the_kill_and_its_transaction_is_lost(tmp_path):
    """SIGKILL semantics: the killed thread stays parked (no finally, no rollback handler runs), the connection
    is closed without a commit, and a new store on the file sees none of the uncommitted rows."""
    db = tmp_path / "h.db"
    chaos = Chaos(0)
    chaos.plan = [Kill(0.0, "sql", "writer", skip=1)]  # the second statement inside the transaction
    store = open_store(db, factory=chaos.connection_class())
    with store.write() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    after_kill: list[str] = []

    @dataclass
    class Writer:
        name: str = "writer"

        def cycle(self) -> None:
            try:
                with store.write() as conn:
                    conn.execute("INSERT INTO t VALUES (1)")
                    conn.execute("INSERT INTO t VALUES (2)")  # killed before this one
                    conn.execute("INSERT INTO t VALUES (3)")
            finally:
                after_kill.append("finally ran")

    inc = chaos.current = Incarnation(0)
    kill = inc.cycle(Writer())  # type: ignore[arg-type]
    assert kill is not None and kill.kind == "sql" and kill.detail.startswith("INSERT")
    store.close()  # what the kernel does for a dead process: its locks go, its transaction was never committed
    assert inc.thread.is_alive() and after_kill == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        conn.execute("INSERT INTO t VALUES (4)")  # the write lock is free again
    assert threading.active_count() >= 2


def test_simulate_command_reports_the_accounting_last(tmp_path):
    out = CliRunner().invoke(
        simulate_command,
        ["--workers", "100", "--kills", "4", "--kill-seed", "2", "--queue-wait", "20", "--work-dir", str(tmp_path)],
    )
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert any("kills by kind" in line for line in lines)
    last = json.loads(lines[-1])
    chaos = last["points"][0]["chaos"]
    assert chaos["kills"] == 4 and last["chaos_ok"] is chaos["ok"]
    assert chaos["workers_lost"] == chaos["workers_doubled"] == chaos["ranges_lost"] == 0
