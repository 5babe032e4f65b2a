"""Propagator: drains the outbox in order, keeps messages through an outage, parks refusals, gives an HTTP 500 on a
range report up after MAX_SERVER_ERRORS tries (at once for the real server's known defect) but never a job update's,
finishes jobs the task has no ranges left for, and acts on a kill command in the job heartbeat's answer."""

from __future__ import annotations

import json

from doubles import Outage, envelope, http
from harvester_edge.agents.propagator import KNOWN_500, MAX_SERVER_ERRORS, Propagator

RANGES = "event/update_event_ranges"
JOBS = "pilot/update_jobs_bulk"


def report(rid, status="finished"):
    return [{"eventRangeID": rid, "eventStatus": status}]


def test_an_outage_keeps_the_message_and_stops_draining(site):
    site.message("update_event_ranges", report("r1"))
    site.message("update_event_ranges", report("r2"))
    site.transport.on(RANGES, Outage)
    propagator = site.agent(Propagator)
    site.cycle(propagator)
    assert len(site.transport.calls) == 1  # r2 is not tried behind r1
    first = site.one("outbox", id=1)
    assert (first["state"], first["attempts"]) == ("pending", 1)
    assert "no answer" in first["last_error"]
    site.transport.always(RANGES, {"Returns": [True]})
    site.cycle(propagator)
    assert [m["state"] for m in site.read("outbox")] == ["sent", "sent"]


def test_messages_go_in_order_and_a_refused_one_is_parked_while_the_next_is_sent(site):
    for rid in ("r1", "r2", "r3"):
        site.message("update_event_ranges", report(rid))
    site.transport.on(RANGES, envelope(None, success=False, message="bad eventRangeID"))
    site.transport.always(RANGES, {"Returns": [True]})
    site.cycle(site.agent(Propagator))
    sent = [json.loads(c.body["event_ranges"])[0]["eventRangeID"] for c in site.transport.calls]
    assert sent == ["r1", "r2", "r3"]
    assert [m["state"] for m in site.read("outbox")] == ["rejected", "sent", "sent"]
    assert "bad eventRangeID" in site.one("outbox", id=1)["last_error"]


def test_a_range_report_answered_500_is_given_up_after_max_server_errors(site):
    site.message("update_event_ranges", report("r1"))
    site.transport.always(RANGES, http(500, "Internal Server Error"))
    propagator = site.agent(Propagator)
    for n in range(1, MAX_SERVER_ERRORS):
        site.cycle(propagator)
        assert site.one("outbox")["state"] == "pending", f"given up after {n} answer(s)"
        site.clock.advance(2)
    site.cycle(propagator)
    message = site.one("outbox")
    assert (message["state"], message["attempts"]) == ("sent", MAX_SERVER_ERRORS)
    assert "HTTP 500" in message["last_error"]
    assert len(site.transport.calls) == MAX_SERVER_ERRORS  # one try per cycle


def test_the_real_servers_known_500_counts_as_applied_at_once(site):
    site.message("update_event_ranges", report("r1"))
    site.transport.on(RANGES, http(500, f"TypeError: {KNOWN_500}: 'dict'"))
    site.cycle(site.agent(Propagator))
    assert site.one("outbox")["state"] == "sent"


def test_a_job_update_answered_500_stays_pending(site):
    site.message("update_jobs", [{"jobId": 1, "state": "finished", "nEvents": 10}])
    site.transport.always(JOBS, http(500, "Internal Server Error"))
    propagator = site.agent(Propagator)
    for _ in range(MAX_SERVER_ERRORS + 1):
        site.cycle(propagator)
        site.clock.advance(2)
    message = site.one("outbox")
    assert (message["state"], message["attempts"]) == ("pending", MAX_SERVER_ERRORS + 1)


def test_a_job_without_workers_or_ranges_left_is_finished_and_reported(site):
    site.job(1, "running", events_done=800)
    site.worker(1, "finished", jobs=(1,))
    site.transport.on("event/get_available_event_range_count", 0)
    site.transport.always(JOBS, [{"StatusCode": 0}])
    site.cycle(site.agent(Propagator))
    assert site.one("jobs")["state"] == "finished"
    (update,) = [c for c in site.transport.called(JOBS) if c.body["job_list"][0]["job_status"] == "finished"]
    assert update.body["job_list"][0]["n_events"] == 800
    assert site.one("outbox")["state"] == "sent"


def test_a_job_whose_task_has_ranges_left_is_not_finished(site):
    site.job(1, "running", no_more_ranges=1)
    site.worker(1, "finished", jobs=(1,))
    site.transport.on("event/get_available_event_range_count", 3)
    site.transport.always(JOBS, [{"StatusCode": 0}])
    site.cycle(site.agent(Propagator))
    job = site.one("jobs")
    assert (job["state"], job["no_more_ranges"], job["events_total"]) == ("running", 0, 30)  # 3 ranges of 10


def test_a_kill_command_in_the_heartbeat_answer_cancels_the_job_and_its_workers(site):
    site.job(1, "running")
    site.worker(1, "running", jobs=(1,), batch_id="1")
    site.transport.on(JOBS, [{"StatusCode": 0, "command": "tobekilled"}])
    site.cycle(site.agent(Propagator))
    assert site.one("jobs")["state"] == "cancelled"
    assert site.one("workers")["kill_requested"] == 1
