"""Brokerage by memory with scouts, and WORK_SHORTAGE with pledges, on the whole appliance: the real daemon, the
embedded central service, real pilots under mpirun (local batch plugin) and a payload that really allocates memory
(the pilot measures its PSS from /proc/<pid>/smaps_rollup)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.mpi

ONE_RANK = {
    "batch": "local",
    "nodes_min": 1,
    "nodes_max": 1,
    "ranks_per_node": 1,
    "cores_per_node": 1,
    "walltime_min": "1m",
    "walltime_max": "3m",
    "max_queued_workers": 1,
    "max_running_workers": 1,
    "launcher": "mpirun",
    "monitor_interval": 0.1,
}
NORMAL = {**ONE_RANK, "rank_memory_max_mb": 250}
HIGHMEM = {"name": "highmem", **ONE_RANK, "rank_memory_min_mb": 200, "rank_memory_max_mb": 4000}


def memory_task(mb: int, events: int, scouts: int) -> dict:
    return {
        "name": f"mem{mb}",
        "payload": {"kind": "python", "callable": "jumbo.payloads:allocate", "args": {"mb": mb, "seconds": 0.8}},
        "events": events,
        "events_per_range": 1,
        "seconds_per_event": 1.0,
        "memory_per_rank_mb": 100,  # declared too small: the scouts find out
        "max_attempts": 3,
        "jobs": 1,
        "scouts": scouts,
        "wait_for_scouts": True,
    }


def test_scouts_on_the_normal_queue_then_the_rest_only_on_highmem(make_site):
    site = make_site(queue=NORMAL, extra_queues=[HIGHMEM])
    task_id = site.submit_task(**memory_task(400, events=6, scouts=2))
    site.start()
    task = site.wait_task(task_id, timeout=240)
    site.wait_workers_ended()
    assert site.stop() == 0
    assert task["status"] == "finished", site.log_tail()
    est = task["estimates"]
    assert est["scouts_done"] == 2 and est["memory_from"] == "scouts"
    assert 400 <= est["memory_per_rank_mb"] < 1000  # 400 MB held by the payload, plus the rank's interpreter
    assert est["seconds_per_event_from"] == "scouts" and 0.5 < est["seconds_per_event"] < 30
    with site.central_db() as conn:
        rows = conn.execute(
            "SELECT r.process_id, j.computing_element FROM ranges r JOIN jobs j ON j.panda_id = r.panda_id "
            "WHERE r.task_id = ? AND r.status = 3 ORDER BY r.process_id",
            (task_id,),
        ).fetchall()
    where = dict(rows)
    assert sorted(where) == list(range(1, 7))
    assert {where[1], where[2]} == {"q"}  # the scouts ran on the normal queue (the declared 100 MB fit there)
    assert {where[p] for p in range(3, 7)} == {"highmem"}, where  # the rest only where 400+ MB per rank fit
    site.assert_exactly_once(task_id, 6)
    shown = site.cli("task", "show", str(task_id)).stdout
    assert "scouts" in shown and "memory_from" in shown


def test_work_shortage_leaves_opportunistic_queues_alone_and_keeps_the_pledge(make_site, tasks):
    pledged = {**ONE_RANK, "max_running_workers": 3, "max_queued_workers": 3, "pledged_cores": 1}
    opportunistic = {"name": "opp", **ONE_RANK, "opportunistic": True}
    site = make_site(queue=pledged, extra_queues=[opportunistic])
    assert "yes" in site.cli("central", "shortage", "on").stdout
    task = tasks.sleep(40, 0.05, per_range=5)
    task["jobs"] = 3
    task_id = site.submit_task(**task)
    site.start()
    most = 0
    deadline = time.monotonic() + 240
    while site.task(task_id)["status"] not in ("finished", "failed"):
        assert time.monotonic() < deadline, site.log_tail()
        if not (site.work / "harvester.db").exists():  # the daemon is starting
            time.sleep(0.3)
            continue
        with site.harvester_db() as conn:
            live = conn.execute(
                "SELECT count(*) FROM workers WHERE queue = 'q' AND state IN ('submitting', 'queued', 'running')"
            ).fetchone()[0]
        most = max(most, live)
        time.sleep(0.3)
    site.wait_workers_ended()
    status = json.loads(site.cli("status", "--json").stdout)
    assert site.stop() == 0
    with site.harvester_db() as conn:
        by_queue = dict(conn.execute("SELECT queue, count(*) FROM workers GROUP BY queue").fetchall())
        jobs_by_queue = dict(conn.execute("SELECT queue, count(*) FROM jobs GROUP BY queue").fetchall())
    assert site.task(task_id)["status"] == "finished"
    assert "opp" not in by_queue and "opp" not in jobs_by_queue  # the opportunistic queue was left alone
    # three jobs wanted workers, yet never more than the pledged 1 core ran at once; jumbo jobs share the task's
    # ranges, so the first worker ran them all and the two jobs still waiting got no worker for an empty pool
    log = (site.work / "logs" / "harvester-edge.log").read_text()
    assert jobs_by_queue["q"] == 3 and by_queue["q"] == 1 and most == 1
    with site.harvester_db() as conn:
        assert {r[0] for r in conn.execute("SELECT state FROM jobs")} == {"finished"}
    assert "queue q: no new worker beyond the pledge in a work shortage" in log, site.log_tail()
    pledges = {q["queue"]: q for q in status["pledges"]["queues"]}
    assert status["pledges"]["work_shortage"] is True
    assert pledges["q"]["pledged_cores"] == 1 and pledges["q"]["pledged_core_hours_24h"] == 24
    assert 0 < pledges["q"]["core_hours_24h"] < 1 and pledges["opp"]["core_hours_24h"] == 0
    assert pledges["opp"]["opportunistic"] is True
