"""Fetcher: asks the central service for jobs only while the queue holds fewer than max_running_workers active
jobs, never for a draining queue, and keeps only jobs that can run here."""

from __future__ import annotations

from doubles import Outage, envelope, panda_job
from harvester_edge.agents.fetcher import Fetcher
from harvester_edge.operations import set_draining


def test_asks_only_for_the_room_below_the_queues_target_and_keeps_the_jobs(make_site):
    site = make_site(max_running_workers=3)
    site.job(1, "running")
    site.transport.on("pilot/acquire_jobs", {"jobs": [panda_job(2), panda_job(3)]})
    site.cycle(site.agent(Fetcher))
    (call,) = site.transport.called("pilot/acquire_jobs")
    assert call.body["n_jobs"] == 2  # 3 allowed, 1 active
    assert call.body["computing_element"] == "q"
    assert [(r["panda_id"], r["state"], r["events_total"]) for r in site.read("jobs")] == [
        (1, "running", 800),
        (2, "fetched", 800),
        (3, "fetched", 800),
    ]


def test_no_call_when_the_queue_is_at_its_target(make_site):
    site = make_site(max_running_workers=2)
    site.job(1, "running")
    site.job(2, "fetched")
    site.job(3, "finished")  # ended jobs do not count
    site.cycle(site.agent(Fetcher))
    assert site.transport.calls == []


def test_ended_jobs_leave_room(make_site):
    site = make_site(max_running_workers=2)
    site.job(1, "finished")
    site.job(2, "cancelled")
    site.transport.on("pilot/acquire_jobs", {"jobs": []})
    site.cycle(site.agent(Fetcher))
    assert site.transport.called("pilot/acquire_jobs")[0].body["n_jobs"] == 2


def test_a_draining_queue_fetches_nothing_and_resumes_after(site):
    set_draining(site.config, ["q"], True)
    site.cycle(site.agent(Fetcher))
    assert site.transport.calls == []
    set_draining(site.config, ["q"], False)
    site.transport.on("pilot/acquire_jobs", {"jobs": [panda_job(5)]})
    site.cycle(site.agent(Fetcher))
    assert [r["panda_id"] for r in site.read("jobs")] == [5]


def test_no_jobs_in_panda_is_an_empty_answer_not_an_error(site):
    site.transport.on("pilot/acquire_jobs", envelope(None, success=False, message="No jobs in PanDA"))
    site.cycle(site.agent(Fetcher))
    assert site.read("jobs") == []


def test_an_outage_ends_the_cycle_without_asking_for_the_other_queues(make_site):
    site = make_site(queues=[{"name": "a", "batch": "slurm"}, {"name": "b", "batch": "slurm"}])
    site.transport.on("pilot/acquire_jobs", Outage)
    site.cycle(site.agent(Fetcher))
    assert [c.body["computing_element"] for c in site.transport.calls] == ["a"]
    assert site.read("jobs") == []


def test_a_refusal_for_one_queue_does_not_stop_the_next(make_site):
    site = make_site(queues=[{"name": "a", "batch": "slurm"}, {"name": "b", "batch": "slurm"}])
    site.transport.on(
        "pilot/acquire_jobs", envelope(None, success=False, message="site a unknown"), {"jobs": [panda_job(7)]}
    )
    site.cycle(site.agent(Fetcher))
    assert [c.body["computing_element"] for c in site.transport.calls] == ["a", "b"]
    assert [(r["panda_id"], r["queue"]) for r in site.read("jobs")] == [(7, "b")]


def test_a_real_servers_job_that_cannot_run_here_is_left_alone(site):
    unrunnable = {"PandaID": 8, "taskID": 9, "jobsetID": 9, "transformation": "", "jobPars": ""}
    site.transport.on("pilot/acquire_jobs", {"jobs": [unrunnable, panda_job(9)]})
    site.cycle(site.agent(Fetcher))
    assert [r["panda_id"] for r in site.read("jobs")] == [9]
