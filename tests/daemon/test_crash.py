"""SIGKILL at random moments while a task runs: each restart opens a consistent DB, and the task still ends with
every event finished exactly once."""

from __future__ import annotations

import os
import random
import time

import pytest

pytestmark = pytest.mark.mpi  # real local MPI workers

KILLS = 5
SEED = int(os.environ.get("HE_CRASH_SEED", time.time_ns() % 1_000_000))


def test_sigkill_at_random_moments_leaves_a_db_a_restart_finishes_exactly_once(make_site, tasks):
    print(f"kill offsets from HE_CRASH_SEED={SEED} (set it to replay this run)")  # shown when the test fails
    rng = random.Random(SEED)
    # one worker of 2 ranks at a time: 3000 events x 0.02 s take ~30 s, longer than the kills (5 x 0.2-3 s + starts)
    site = make_site(queue={"max_running_workers": 1})
    events = 3000
    task_id = site.task_submit(tasks.sleep(events, 0.02, per_range=10))
    offsets = [round(rng.uniform(0.2, 3.0), 2) for _ in range(KILLS)]
    pid = None
    mid_task = 0
    for offset in offsets:
        started = site.cron()
        assert "daemon started" in started.stdout, (SEED, started.stdout)
        pid = site.wait_daemon(not_pid=pid)
        time.sleep(offset)
        site.kill_pid(pid)
        # what the killed daemon left must open and be legal before anything repairs it
        site.assert_db_sound(context=f"seed {SEED}, killed {offset}s after the start")
        mid_task += site.task_status(task_id) != "finished"

    assert mid_task >= 3, f"seed {SEED}: only {mid_task} kills came while the task ran"
    site.cron()
    pid = site.wait_daemon(not_pid=pid)
    task = site.wait_task(task_id, timeout=90, until=("finished", "failed", "aborted"))
    assert task["status"] == "finished", (SEED, offsets, task)
    assert task["events_finished"] == events
    site.assert_exactly_once(task_id, events)

    # let the monitor see the workers end, then stop cleanly: nothing left in between, no lease held
    wait_workers_done(site, timeout=30)
    site.stop_pid(pid, timeout=10 + 15)
    site.assert_consistent()
    assert site.held_leases() == {"workers": 0, "jobs": 0, "event_ranges": 0}
    with site.harvester_db() as conn:
        # the harvester's own view: no event finished by two of its ranges
        rows = conn.execute("SELECT first_event, last_event FROM event_ranges WHERE state = 'finished'").fetchall()
    covered = [event for first, last in rows for event in range(first, last + 1)]
    assert len(covered) == len(set(covered)), (SEED, "the harvester finished an event twice")


def wait_workers_done(site, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with site.harvester_db() as conn:
            active = conn.execute(
                "SELECT count(*) FROM workers WHERE state IN ('new', 'submitting', 'queued', 'running')"
            ).fetchone()[0]
        if active == 0:
            return
        assert time.monotonic() < deadline, f"{active} worker(s) still active:\n{site.log_tail()}"
        time.sleep(0.5)
