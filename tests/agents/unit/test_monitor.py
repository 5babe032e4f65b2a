"""Monitor: one squeue call per queue maps batch states to worker states; the pilots' status files become range
transitions and outbox reports exactly once (a file read again after a crash is not applied twice); ranges a
worker never reported go back as not done when it ends."""

from __future__ import annotations

import json
import os

from doubles import out, panda_ranges, squeue
from harvester_edge.agents.monitor import NOT_DONE_CODE, Monitor
from jumbo import protocol


def test_batch_states_map_to_worker_states_in_one_squeue_call(site):
    batch = {"1": "PENDING", "2": "RUNNING", "3": "COMPLETED", "4": "FAILED", "5": "CANCELLED", "6": "TIMEOUT"}
    for wid in range(1, 8):  # worker 7's job is unknown to squeue and sacct
        site.worker(wid, "queued", batch_id=str(wid), submitted_at=site.clock.now())
    site.runner.always("squeue", squeue(batch))
    site.runner.always("sacct", out(""))
    site.cycle(site.agent(Monitor))
    states = {w["id"]: w["state"] for w in site.read("workers")}
    assert states == {
        1: "queued",
        2: "running",
        3: "finished",
        4: "failed",
        5: "cancelled",
        6: "finished",  # the pilots drain before the walltime: a TIMEOUT is not a failure
        7: "missing",
    }
    assert len(site.runner.called("squeue")) == 1
    running, failed = site.one("workers", id=2), site.one("workers", id=4)
    assert running["started_at"] == site.clock.now() and running["ended_at"] is None
    assert failed["ended_at"] == site.clock.now() and failed["batch_state"] == "FAILED"


def test_a_requeued_running_worker_stays_running(site):
    site.worker(1, "running", batch_id="1", started_at=site.clock.now() - 60)
    site.runner.always("squeue", squeue({"1": "PENDING"}))
    site.cycle(site.agent(Monitor))
    worker = site.one("workers", id=1)
    assert (worker["state"], worker["batch_state"]) == ("running", "PENDING")


def test_an_unreachable_batch_system_changes_no_state(site):
    site.worker(1, "running", batch_id="1", started_at=site.clock.now())
    site.runner.always("squeue", out(stderr="slurm_load_jobs error: Unable to contact slurm controller", returncode=1))
    site.cycle(site.agent(Monitor))
    assert site.one("workers", id=1)["state"] == "running"


def dispatched(site, worker_id=1):
    """A running job (1) with 3 ranges of 10 events dispatched to a running worker; returns its access point."""
    site.job(1, "running")
    ap = site.worker(worker_id, "running", jobs=(1,), batch_id=str(worker_id), started_at=site.clock.now())
    site.ranges(1, panda_ranges(1, [1, 2, 3]), state="dispatched", worker_id=worker_id)
    site.runner.always("squeue", squeue({str(worker_id): "RUNNING"}))
    return ap


def report(ap, seq, *entries):
    protocol.write_event_status(ap, seq, {1: [{"eventRangeID": rid, "eventStatus": s} for rid, s in entries]})


def test_a_pilot_report_moves_ranges_counts_events_and_queues_one_message(site):
    ap = dispatched(site)
    report(ap, 1, ("77-1-1-1-1", "finished"), ("77-1-1-2-1", "failed"))
    site.cycle(site.agent(Monitor))
    states = {r["range_id"]: r["state"] for r in site.read("event_ranges")}
    assert states == {"77-1-1-1-1": "finished", "77-1-1-2-1": "failed", "77-1-1-3-1": "dispatched"}
    assert site.one("jobs")["events_done"] == 20
    (message,) = site.read("outbox")
    assert message["kind"] == "update_event_ranges"
    assert [(r["eventRangeID"], r["eventStatus"]) for r in json.loads(message["payload"])] == [
        ("77-1-1-1-1", "finished"),
        ("77-1-1-2-1", "failed"),
    ]
    assert (ap / "event_status.1.json.read").exists()


def test_a_report_read_again_after_a_crash_is_not_applied_twice(site):
    ap = dispatched(site)
    report(ap, 1, ("77-1-1-1-1", "finished"))
    monitor = site.agent(Monitor)
    site.cycle(monitor)
    # the crash came after the commit and before the rename: the file is there again, unread
    os.replace(ap / "event_status.1.json.read", ap / "event_status.1.json")
    site.clock.advance(5)
    site.cycle(monitor)
    assert site.one("jobs")["events_done"] == 10
    assert len(site.read("outbox")) == 1
    assert not (ap / "event_status.1.json").exists()  # consumed this time


def test_ranges_not_dispatched_to_the_worker_are_ignored(site):
    ap = dispatched(site)
    site.worker(2, "running", jobs=(1,), batch_id="2", started_at=site.clock.now())
    site.ranges(1, panda_ranges(1, [4]), state="dispatched", worker_id=2)
    site.runner.always("squeue", squeue({"1": "RUNNING", "2": "RUNNING"}))
    report(ap, 1, ("77-1-1-4-1", "finished"), ("no-such-range", "finished"))  # worker 2's and an unknown one
    site.cycle(site.agent(Monitor))
    assert site.one("event_ranges", range_id="77-1-1-4-1")["state"] == "dispatched"
    assert site.one("jobs")["events_done"] == 0
    assert site.read("outbox") == []


def test_an_ended_workers_unreported_ranges_go_back_as_not_done(site):
    ap = dispatched(site)
    report(ap, 1, ("77-1-1-1-1", "finished"))  # its last report, written as it ended
    site.runner.always("squeue", squeue({"1": "COMPLETED"}))
    site.cycle(site.agent(Monitor))
    states = {r["range_id"]: r["state"] for r in site.read("event_ranges")}
    assert states == {"77-1-1-1-1": "finished", "77-1-1-2-1": "released", "77-1-1-3-1": "released"}
    messages = [json.loads(m["payload"]) for m in site.read("outbox")]
    assert [[r["eventStatus"] for r in m] for m in messages] == [["finished"], ["failed", "failed"]]
    assert {r["errorCode"] for r in messages[1]} == {NOT_DONE_CODE}
