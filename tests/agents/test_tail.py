"""The tail of a task on the real local Slurm cluster: a worker killed near the end gives its ranges back, and the
pilot of the worker still running takes them (issue 21), instead of being told "no more" and leaving the returned
ranges to a new allocation."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]

# two workers of 2 nodes x 2 ranks at a time (8 ranks), as in test_slurm_e2e
QUEUE = {
    "batch": "slurm",
    "partition": "debug",
    "nodes_min": 2,
    "nodes_max": 2,
    "ranks_per_node": 2,
    "cores_per_node": 4,
    "walltime_min": "5m",
    "walltime_max": "10m",
    "max_queued_workers": 2,
    "max_running_workers": 2,
    "launcher": "srun",
    "mpi_type": "pmix",
    "drain_warning": "20s",
    "env_setup": ["export OMPI_MCA_btl=^vader", "export OMPI_MCA_btl_tcp_if_include=lo"],
}


def test_ranges_of_a_worker_killed_near_the_end_go_to_the_running_pilot(make_site, tasks, slurm_conf):
    site = make_site(queue=QUEUE, env=slurm_conf)
    task = tasks.sleep(4800, 0.05, per_range=40)  # 120 ranges of 2 s: 30 s on the 8 ranks of two workers
    # the task says 0.4 s per event, so the shaper sees 4 min of work on 8 ranks and makes two workers at once;
    # the pilots measure 0.05 s, and from then on the shaper knows better
    task["seconds_per_event"] = 0.4
    task_id = site.submit_task(**task)
    site.start()
    victim = killed_at = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim is None:
        time.sleep(0.1)
        if not (site.work / "harvester.db").exists():
            continue
        with site.harvester_db() as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone():
                continue  # the daemon is creating its database
            running = conn.execute(
                "SELECT w.id, w.batch_id, (SELECT count(*) FROM event_ranges e WHERE "
                "e.worker_id = w.id AND e.state = 'dispatched') FROM workers w "
                "WHERE w.state = 'running' ORDER BY 3 DESC"
            ).fetchall()
            dry = conn.execute("SELECT no_more_ranges FROM jobs").fetchone()
        # the tail: the central service has handed out every range, both pilots work on what they hold
        if len(running) == 2 and dry and dry[0] == 1 and running[0][2] >= 4:
            victim, batch_id = running[0][0], running[0][1]
            survivor = running[1][0]
            subprocess.run(["scancel", batch_id], check=True, timeout=30, env=site.env)
            killed_at = time.time()
    assert victim, f"never saw two running workers in the task's tail\n{site.log_tail()}"
    result = site.wait_task(task_id, timeout=240)
    site.wait_workers_ended()
    assert site.stop() == 0
    assert result["status"] == "finished"
    site.assert_exactly_once(task_id, 4800)
    with site.harvester_db() as conn:
        returned = conn.execute(
            "SELECT first_event FROM event_ranges WHERE worker_id = ? AND state = 'released'", (victim,)
        ).fetchall()
        released = [
            r[0]
            for r in conn.execute(
                "SELECT range_id FROM event_ranges WHERE worker_id = ? AND state = 'released'", (victim,)
            )
        ]
        # when the central service learnt of them: the outbox message that handed them back was sent
        sent = min(
            at
            for at, payload in conn.execute(
                "SELECT h.at, o.payload FROM outbox o JOIN state_history h ON h.kind = 'outbox' AND h.object_id = "
                "CAST(o.id AS TEXT) AND h.dst = 'sent' WHERE o.kind = 'update_event_ranges'"
            )
            if any(rid in payload for rid in released)
        )
        redone = dict(
            conn.execute(
                "SELECT e.first_event, e.worker_id FROM event_ranges e WHERE e.state = 'finished' AND e.first_event "
                "IN (SELECT first_event FROM event_ranges WHERE worker_id = ? AND state = 'released')",
                (victim,),
            )
        )
        taken = conn.execute(
            "SELECT min(h.at) FROM state_history h JOIN event_ranges e ON e.range_id = h.object_id WHERE "
            "h.kind = 'event_ranges' AND h.dst = 'dispatched' AND e.worker_id = ? AND e.first_event IN "
            "(SELECT first_event FROM event_ranges WHERE worker_id = ? AND state = 'released')",
            (survivor, victim),
        ).fetchone()[0]
        later = conn.execute(
            "SELECT w.id, (SELECT count(*) FROM event_ranges e WHERE e.worker_id = w.id) "
            "FROM workers w WHERE w.created_at > ?",
            (killed_at,),
        ).fetchall()
        states = dict(conn.execute("SELECT id, state FROM workers WHERE id IN (?, ?)", (victim, survivor)))
    with site.harvester_db() as conn:
        seen = conn.execute(
            "SELECT id, state, created_at, (SELECT count(*) FROM event_ranges e WHERE e.worker_id = "
            "w.id) FROM workers w"
        ).fetchall()
    why = f"killed at {killed_at}: workers {seen}\n{site.log_tail(60)}"
    assert states == {victim: "cancelled", survivor: "finished"}, why
    assert returned, "the cancelled worker held no ranges when it was killed"
    # every returned range was processed by the pilot that was still running, not by a new allocation
    assert {first for (first,) in returned} == set(redone) and set(redone.values()) == {survivor}, (redone, why)
    # ... once the central service knew them: the feeder fetches them within a cycle (0.3 s), the pilot takes them
    # with its next request, which it makes when its own queue (up to 4 ranges per rank of 2 s each) runs low
    assert sent and taken and 0 <= taken - sent < 12.0, (sent, taken, why)
    # no allocation was wasted on the tail: a worker made after the kill would have to get ranges
    assert [w for w in later if w[1] == 0] == [], (later, why)
    attrs = json.loads((site.work / "workers").joinpath(f"w{survivor:06d}", "worker_attributes.json").read_text())
    assert attrs["endReason"] == "no more ranges", attrs
