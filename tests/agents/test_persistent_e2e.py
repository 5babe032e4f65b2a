"""Semi-persistent pilots (queue option `persistent`) with the real daemon and real mpirun pilots (local plugin).

A pilot out of ranges asks for another job through its access point and runs a task submitted later; it ends at
its idle timeout, or at once when its worker is killed or its queue drains. Exactly-once is checked in the central
service's records, also when the pilot is killed while idle or just after it took a new job.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from helpers import FAST_AGENTS, local_queue, wait_for

pytestmark = pytest.mark.mpi

AGENTS = {**FAST_AGENTS, "persistent": "0.25s"}


def persistent_queue(idle_timeout: str) -> dict:
    # one worker at a time: the second task can only run on the pilot that is already there
    return local_queue(None, max_running_workers=1, max_queued_workers=1, persistent={"idle_timeout": idle_timeout})


def workers(site) -> list[tuple]:
    with site.harvester_db() as conn:
        return conn.execute("SELECT id, state, access_point FROM workers ORDER BY id").fetchall()


def heartbeat_state(ap: str) -> str | None:
    try:
        return json.loads((Path(ap) / "worker_heartbeat.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def idle_worker(site, timeout: float = 90) -> tuple:
    """The running worker once its pilot says it is idle (its heartbeat), after its job ran out of ranges."""

    def idle():
        running = [w for w in workers(site) if w[1] == "running"]
        return running[0] if running and heartbeat_state(running[0][2]) == "idle" else None

    return wait_for(idle, timeout, "an idle persistent pilot", step=0.2)


def central_jobs(site, task_id: int) -> list[str]:
    with site.central_db() as conn:
        return [r[0] for r in conn.execute("SELECT status FROM jobs WHERE task_id = ?", (task_id,)).fetchall()]


def job_report(ap: str) -> dict:
    return json.loads((Path(ap) / "jobReport.json").read_text())


def test_idle_pilot_takes_a_later_task_then_ends_at_its_idle_timeout(make_site, tasks):
    site = make_site(queue=persistent_queue("20s"), agents=AGENTS)
    first = site.submit_task(**tasks.numpy(200))
    site.start()
    assert site.wait_task(first, timeout=120)["status"] == "finished"
    wid, _, ap = idle_worker(site)
    # the idle pilot is done with its job: it is reported finished while the pilot waits for the next one
    wait_for(lambda: central_jobs(site, first) == ["finished"], 15, "the first job reported finished")
    assert [w[1] for w in workers(site)] == ["running"]
    second = site.submit_task(**tasks.numpy(300))
    assert site.wait_task(second, timeout=60)["status"] == "finished"
    assert [w[0] for w in workers(site)] == [wid]  # the same pilot ran both tasks, no new worker came
    ended = site.wait_workers_ended(timeout=60)
    assert ended[0][1] == "finished"
    report = job_report(ap)
    assert report["endReason"].startswith("idle timeout"), report["endReason"]
    assert sorted(report["jobs"]) == sorted(str(pid) for pid in _panda_ids(site))  # one report of both jobs
    site.assert_exactly_once(first, 200)
    site.assert_exactly_once(second, 300)
    # both jobs settled and reported to the central service while (and after) their pilot went on
    wait_for(lambda: central_jobs(site, first) == ["finished"] and central_jobs(site, second) == ["finished"], 30)
    with site.harvester_db() as conn:
        links = conn.execute("SELECT request_seq, left_at IS NOT NULL FROM job_workers ORDER BY panda_id").fetchall()
    assert links == [(None, 1), (1, 1)]  # each job was left when the pilot asked for the next one
    assert site.stop() == 0


def _panda_ids(site) -> list[int]:
    with site.harvester_db() as conn:
        return [r[0] for r in conn.execute("SELECT panda_id FROM jobs ORDER BY panda_id")]


def test_idle_pilot_killed_then_a_new_worker_runs_the_next_task(make_site, tasks):
    site = make_site(queue=persistent_queue("10m"), agents=AGENTS)
    first = site.submit_task(**tasks.numpy(100))
    site.start()
    site.wait_task(first, timeout=120)
    wid, _, ap = idle_worker(site)
    started = time.monotonic()
    assert "flagged" in site.cli("kill-workers", "--all").stdout
    site.wait_workers_ended(timeout=60)
    assert time.monotonic() - started < 30  # not the 10 minutes of its idle timeout
    second = site.submit_task(**tasks.numpy(200))
    assert site.wait_task(second, timeout=120)["status"] == "finished"
    assert len(workers(site)) == 2  # the killed pilot took nothing; a new worker ran the second task
    site.assert_exactly_once(first, 100)
    site.assert_exactly_once(second, 200)
    assert site.stop() == 0


def test_pilot_killed_just_after_taking_a_new_job_loses_no_range(make_site, tasks):
    site = make_site(queue=persistent_queue("10m"), agents=AGENTS)
    first = site.submit_task(**tasks.numpy(100))
    site.start()
    site.wait_task(first, timeout=120)
    wid, _, ap = idle_worker(site)
    second = site.submit_task(**tasks.sleep(200, 0.05, per_range=10))
    wait_for(lambda: list(Path(ap).glob("worker_newjob.*.json.read")), 30, "the pilot to take the new job", 0.05)
    site.cli("kill-workers", "--all")
    result = site.wait_task(second, timeout=180)
    site.wait_workers_ended(timeout=120)
    assert result["status"] == "finished"
    assert len(workers(site)) >= 2  # a new worker finished what the killed one held
    site.assert_exactly_once(first, 100)
    site.assert_exactly_once(second, 200)
    assert site.stop() == 0


def test_drained_queue_stops_its_idle_pilot(make_site, tasks):
    site = make_site(queue=persistent_queue("10m"), agents=AGENTS)
    first = site.submit_task(**tasks.numpy(100))
    site.start()
    site.wait_task(first, timeout=120)
    wid, _, ap = idle_worker(site)
    site.cli("drain", "--queue", "q")
    site.wait_workers_ended(timeout=30)
    assert job_report(ap)["endReason"] == "harvester: queue draining"
    site.assert_exactly_once(first, 100)
    wait_for(lambda: central_jobs(site, first) == ["finished"], 30)
    assert site.stop() == 0


@pytest.mark.slurm
def test_idle_pilot_on_slurm_takes_a_later_task_and_is_killed_while_idle(make_site, tasks, slurm_conf):
    queue = {
        "batch": "slurm",
        "partition": "debug",
        "nodes_min": 1,
        "nodes_max": 1,
        "ranks_per_node": 2,
        "cores_per_node": 4,
        "walltime_min": "5m",
        "walltime_max": "10m",
        "max_queued_workers": 1,
        "max_running_workers": 1,
        "launcher": "srun",
        "env_setup": ["export OMPI_MCA_btl=^vader", "export OMPI_MCA_btl_tcp_if_include=lo"],
        "persistent": {"idle_timeout": "10m"},
    }
    site = make_site(queue=queue, agents=AGENTS, env=slurm_conf)
    first = site.submit_task(**tasks.numpy(200))
    site.start()
    assert site.wait_task(first, timeout=180)["status"] == "finished"
    wid, _, ap = idle_worker(site, timeout=120)
    submitted = time.time()
    second = site.submit_task(**tasks.numpy(200))
    assert site.wait_task(second, timeout=90)["status"] == "finished"
    assert [w[0] for w in workers(site)] == [wid]  # the same Slurm job ran both tasks
    with site.harvester_db() as conn:
        starts = [
            json.loads(r[0])["startTime"]
            for r in conn.execute(
                "SELECT e.result FROM event_ranges e JOIN jobs j ON j.panda_id = e.panda_id "
                "WHERE j.task_id = ? AND e.state = 'finished'",
                (second,),
            )
        ]
    assert min(starts) - submitted < 10  # seconds (the CLI's own start is in it): not a new batch job's wait
    idle_worker(site, timeout=60)
    assert "flagged" in site.cli("kill-workers", "--all").stdout
    ended = site.wait_workers_ended(timeout=90)
    assert [w[0] for w in ended] == [wid]
    site.assert_exactly_once(first, 200)
    site.assert_exactly_once(second, 200)
    wait_for(lambda: central_jobs(site, first) == ["finished"] and central_jobs(site, second) == ["finished"], 30)
    assert site.stop() == 0
