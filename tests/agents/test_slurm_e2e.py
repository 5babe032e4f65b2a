"""The appliance against the real local multi-node Slurm cluster (scripts/slurm-cluster): real sbatch, srun --mpi=pmix,
squeue/sacct, scancel. Exactly-once is checked in the central service's records and by recomputing outputs."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import time

import psutil
import pytest

from helpers import wait_gone
from jumbo import payloads

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]


def slurm_queue(**overrides) -> dict:
    queue = {
        "batch": "slurm",
        "partition": "debug",
        "nodes_min": 2,
        "nodes_max": 2,
        "ranks_per_node": 2,
        "cores_per_node": 4,
        "walltime_min": "1m",
        "walltime_max": "10m",
        "max_queued_workers": 2,
        "max_running_workers": 2,
        "launcher": "srun",
        "mpi_type": "pmix",
        "drain_warning": "20s",
        # several slurmd share this host: Open MPI's shared-memory transport must stay off
        "env_setup": ["export OMPI_MCA_btl=^vader", "export OMPI_MCA_btl_tcp_if_include=lo"],
    }
    return {**queue, **overrides}


def slurm_jobs(env: dict, names: set[str]) -> dict[str, str]:
    """{job id: job name} of every Slurm job named in `names`: squeue for the jobs it still holds (ended ones leave
    after MinJobAge, 10 s here), sacct -c (jobcomp) for every job that ended."""
    found = {}
    for argv in (
        ["squeue", "-h", "-t", "all", "-o", "%i|%j"],
        ["sacct", "-c", "-X", "-n", "-P", "-o", "jobid,jobname", "-S", "now-1days"],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, (argv, out.stderr)
        for line in out.stdout.splitlines():
            job_id, _, name = line.partition("|")
            if name in names:
                found[job_id] = name
    return found


def test_20000_events_on_two_nodes_exactly_once(make_site, tasks, slurm_conf):
    site = make_site(queue=slurm_queue(), env=slurm_conf)
    task_id = site.submit_task(**tasks.numpy(20_000, per_range=100))
    site.start()
    result = site.wait_task(task_id, timeout=420)
    site.wait_workers_ended()
    assert site.stop() == 0
    assert result["status"] == "finished" and result["events_finished"] == 20_000
    site.assert_exactly_once(task_id, 20_000)
    outputs = site.outputs()
    assert len(outputs) == 200
    for path, first, last in random.Random(1).sample(outputs, 12):
        assert payloads.verify(str(path), task_id, first, last, {"size": 32, "rounds": 1})
    with site.harvester_db() as conn:
        workers = conn.execute("SELECT nodes, ranks_per_node, batch_id, state FROM workers").fetchall()
    assert workers and all(w[0] == 2 and w[1] == 2 and w[2] and w[3] == "finished" for w in workers), workers
    # the pilots really spanned two Slurm nodes: each pilot's job report names the Slurm node of every rank
    reports = [json.loads(p.read_text()) for p in (site.work / "workers").glob("*/jobReport.json")]
    assert len(reports) == len(workers), f"{len(reports)} job reports for {len(workers)} workers"
    for report in reports:
        nodes = {rank["node"] for rank in report["perRank"].values()}
        assert len(report["perRank"]) == 4 and len(nodes) == 2, report["perRank"]


def test_walltime_too_short_drains_and_new_workers_finish_the_task(make_site, tasks, slurm_conf):
    # 6,000 events x 0.1 s = 600 rank-seconds; at most 2 workers of 4 ranks run at once and each gets 1 minute
    # (45 s before the drain): no worker can finish alone, every one of them must drain
    site = make_site(
        queue=slurm_queue(
            walltime_min="1m", walltime_max="1m", max_running_workers=1, max_queued_workers=1, drain_warning="15s"
        ),
        env=slurm_conf,
    )
    task_id = site.submit_task(**tasks.sleep(6000, 0.1, per_range=20))
    site.start()
    result = site.wait_task(task_id, timeout=480)
    workers = site.wait_workers_ended()
    site.stop()
    assert result["status"] == "finished"
    site.assert_exactly_once(task_id, 6000)
    assert len(workers) >= 2, workers  # one worker could not do it: more were shaped and submitted
    # every pilot drained before its walltime and ended cleanly (a TIMEOUT or FAILED would mean it was cut off)
    assert all((state, batch_state) == ("finished", "COMPLETED") for _, state, batch_state in workers), workers
    drained = [p.parent.name for p in site.work.glob("workers/*/slurm-*.err") if "draining: " in p.read_text()]
    assert drained, "no pilot drained: the walltime was not too short"


def test_daemon_sigkilled_20_times_loses_and_doubles_nothing(make_site, tasks, slurm_conf):
    site = make_site(queue=slurm_queue(max_running_workers=2, max_queued_workers=2), env=slurm_conf)
    task_id = site.submit_task(**tasks.sleep(4000, 0.02, per_range=20))
    rng = random.Random(20)
    site.start()
    killed: list[int] = []
    for _ in range(20):
        pid = _wait_live_daemon(site, not_pid=killed[-1] if killed else None)  # a new process every round
        time.sleep(rng.uniform(0.2, 2.5))
        _sigkill_daemon(site, pid)
        killed.append(pid)
        site.cli("cron")  # what cron does every minute: starts the daemon again
    assert len(set(killed)) == 20, killed
    result = _wait_task_no_daemon_handle(site, task_id, timeout=480)
    _stop_background_daemon(site)
    assert result["status"] == "finished"
    site.assert_exactly_once(task_id, 4000)
    with site.harvester_db() as conn:
        rows = conn.execute("SELECT job_name, batch_id, state FROM workers").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    names = [r[0] for r in rows]
    batch_ids = [r[1] for r in rows if r[1]]
    assert len(batch_ids) == len(set(batch_ids))  # no batch job recorded twice
    in_slurm = slurm_jobs(slurm_conf, set(names))
    assert in_slurm, "Slurm knows no job of this site's workers"
    assert len(set(in_slurm.values())) == len(in_slurm), in_slurm  # no worker submitted twice
    assert set(in_slurm) == set(batch_ids), (in_slurm, rows)  # every Slurm job is the batch id of its worker
    for name, batch_id, state in rows:  # no batch job lost: every submitted worker has its id
        if state not in ("new", "cancelled"):
            assert batch_id, (name, state)


def test_sbatch_failing_for_a_while_is_retried(make_site, tasks, private_slurm):
    env, cluster = private_slurm  # its controller is stopped: a cluster of its own
    site = make_site(queue=slurm_queue(command_timeout="5s", max_running_workers=1, max_queued_workers=1), env=env)
    task_id = site.submit_task(**tasks.numpy(2000, per_range=50))
    cluster("stop-ctld")
    try:
        site.start()
        deadline = time.monotonic() + 60
        errors = None
        while time.monotonic() < deadline:
            try:
                with site.harvester_db() as conn:
                    errors = conn.execute(
                        "SELECT count(*) FROM workers WHERE state = 'new' AND error IS NOT NULL AND submit_attempts > 0"
                    ).fetchone()[0]
            except sqlite3.OperationalError:  # the daemon has not created the DB or its tables yet
                time.sleep(0.5)
                continue
            if errors:
                break
            time.sleep(1)
        assert errors, "the submitter never met the controller outage"
    finally:
        cluster("start-ctld")
    result = site.wait_task(task_id, timeout=300)
    site.stop()
    assert result["status"] == "finished"
    site.assert_exactly_once(task_id, 2000)
    with site.harvester_db() as conn:
        assert conn.execute("SELECT count(*) FROM workers WHERE state = 'failed'").fetchone()[0] == 0


def test_scancel_of_a_running_worker_hands_its_ranges_back(make_site, tasks, slurm_conf):
    site = make_site(queue=slurm_queue(max_running_workers=1, max_queued_workers=1), env=slurm_conf)
    task_id = site.submit_task(**tasks.sleep(1600, 0.05, per_range=20))  # ~20 s per worker of 4 ranks
    site.start()
    deadline = time.monotonic() + 120
    batch_id = None
    while time.monotonic() < deadline and not batch_id:
        if site.task(task_id)["events_finished"] >= 100:
            with site.harvester_db() as conn:
                row = conn.execute("SELECT batch_id FROM workers WHERE state = 'running'").fetchone()
            batch_id = row[0] if row else None
        time.sleep(0.5)
    assert batch_id, "no running worker to cancel"
    subprocess.run(["scancel", batch_id], check=True, timeout=30, env=site.env)
    result = site.wait_task(task_id, timeout=300)
    site.stop()
    assert result["status"] == "finished"
    site.assert_exactly_once(task_id, 1600)
    with site.harvester_db() as conn:
        state = conn.execute("SELECT state FROM workers WHERE batch_id = ?", (batch_id,)).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] >= 2
    assert state == "cancelled"


def _wait_task_no_daemon_handle(site, task_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = site.task(task_id)
        if task["status"] in ("finished", "failed", "aborted"):
            return task
        time.sleep(1)
    raise AssertionError(f"task {task_id} not done: {site.task(task_id)['ranges']}\n{site.log_tail()}")


def _wait_live_daemon(site, not_pid: int | None, timeout: float = 60) -> int:
    """The pid of the daemon holding the site's lock file (other than `not_pid`), once it runs."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int((site.work / "daemon.lock").read_text().strip() or 0)
            proc = psutil.Process(pid)
            if pid != not_pid and proc.status() != psutil.STATUS_ZOMBIE and str(site.config_path) in proc.cmdline():
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no new daemon holds the lock after {timeout}s (last killed: {not_pid})\n{site.log_tail()}")


def _sigkill_daemon(site, pid: int) -> None:
    import os
    import signal

    if site.daemon is not None and site.daemon.pid == pid:  # the one site.start() ran: our child, reap it
        site.kill()
        return
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 10)  # not our child: gone, or a zombie nobody has reaped yet


def _stop_background_daemon(site) -> None:
    import os
    import signal

    lock = site.work / "daemon.lock"
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
