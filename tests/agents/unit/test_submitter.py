"""Submitter: shapes workers within max_queued_workers / max_running_workers, submits them with sbatch, backs off on
transient failures, fails permanent ones, pauses a queue after repeated permanent failures, and settles submissions
a crash interrupted by looking them up by name."""

from __future__ import annotations

from pathlib import Path

from doubles import out, panda_job, sbatch_ids, squeue_line
from harvester_edge.agents.submitter import PERMANENT_FAILURES_PAUSE, Submitter
from harvester_edge.operations import set_draining
from jumbo import protocol

BIG = panda_job(1, events=100_000)  # more work than any number of workers the limits allow


def test_new_workers_fill_max_queued_and_are_submitted(make_site):
    site = make_site(max_queued_workers=2, max_running_workers=4)
    site.job(1, "fetched", spec=BIG)
    site.runner.always("sbatch", sbatch_ids(500))
    site.cycle(site.agent(Submitter))
    workers = site.read("workers")
    assert [(w["state"], w["batch_id"], w["submit_attempts"]) for w in workers] == [
        ("queued", "500", 1),
        ("queued", "501", 1),
    ]
    assert len(site.runner.called("sbatch")) == 2
    assert site.one("jobs")["state"] == "running"  # its first worker started it
    assert all(len(site.read("job_workers", worker_id=w["id"])) == 1 for w in workers)


def test_no_new_worker_while_the_queued_ones_fill_the_queue(make_site):
    site = make_site(max_queued_workers=2, max_running_workers=4)
    site.job(1, "running", spec=BIG)
    site.worker(1, "queued", jobs=(1,), batch_id="11")
    site.worker(2, "new", jobs=(1,), next_try_at=site.clock.now() + 60)  # waits for its retry
    site.cycle(site.agent(Submitter))
    assert len(site.read("workers")) == 2
    assert site.runner.calls == []


def test_running_workers_over_max_running_leave_room_for_fewer(make_site):
    site = make_site(max_queued_workers=2, max_running_workers=2)
    site.job(1, "running", spec=BIG)
    for wid in (1, 2, 3):
        site.worker(wid, "running", jobs=(1,), batch_id=str(wid), started_at=site.clock.now())
    site.runner.always("sbatch", sbatch_ids(500))
    site.cycle(site.agent(Submitter))
    # room = min(2 - 0 queued, 2 + 2 - 0 - 3 running) = 1
    assert [w["state"] for w in site.read("workers", state="queued")] == ["queued"]


def test_a_transient_sbatch_failure_backs_off_then_retries(site):
    site.job(1, "running", no_more_ranges=1)  # no new shapes: only the planted worker
    site.worker(1, "new", jobs=(1,))
    site.runner.answer("sbatch", out(stderr="sbatch: error: Socket timed out on send/recv operation", returncode=1))
    submitter = site.agent(Submitter)
    site.cycle(submitter)
    (worker,) = site.read("workers")
    assert worker["state"] == "new"
    assert worker["next_try_at"] == site.clock.now() + 5.0  # 5 s x 2^0
    assert "Socket timed out" in worker["error"]
    site.clock.advance(4)
    site.cycle(submitter)
    assert len(site.runner.called("sbatch")) == 1  # still backing off
    site.clock.advance(2)
    site.runner.answer("sbatch", out("4242\n"))
    site.cycle(submitter)
    worker = site.one("workers", id=worker["id"])
    assert (worker["state"], worker["batch_id"], worker["submit_attempts"], worker["error"]) == (
        "queued",
        "4242",
        2,
        None,
    )


def test_a_permanent_sbatch_failure_fails_the_worker(site):
    site.job(1, "running", no_more_ranges=1)
    site.worker(1, "new", jobs=(1,))
    site.runner.answer("sbatch", out(stderr="sbatch: error: Invalid partition name specified", returncode=1))
    site.cycle(site.agent(Submitter))
    (worker,) = site.read("workers")
    assert worker["state"] == "failed"
    assert "Invalid partition name" in worker["error"]
    assert worker["ended_at"] == site.clock.now()


def test_repeated_permanent_failures_pause_new_workers_for_ten_minutes(site):
    site.job(1, "running", spec=BIG)
    for wid in range(1, PERMANENT_FAILURES_PAUSE + 1):
        site.worker(wid, "failed", jobs=(1,), error="sbatch failed: Invalid account")
    submitter = site.agent(Submitter)
    site.cycle(submitter)
    assert len(site.read("workers")) == PERMANENT_FAILURES_PAUSE
    assert site.runner.calls == []
    site.clock.advance(601)  # the failures are older than 10 minutes now
    site.runner.always("sbatch", sbatch_ids(700))
    site.cycle(submitter)
    assert len(site.read("workers", state="queued")) == 2


def test_a_draining_queue_gets_no_new_workers(site):
    site.job(1, "fetched")
    set_draining(site.config, ["q"], True)
    site.cycle(site.agent(Submitter))
    assert site.read("workers") == []


def test_an_interrupted_submission_is_found_by_name_or_submitted_again(site):
    site.job(1, "running", no_more_ranges=1)  # no new shapes: only the two interrupted workers
    site.worker(1, "submitting", jobs=(1,))
    site.worker(2, "submitting", jobs=(1,))
    # squeue --name knows worker 1's job; sacct (the jobs that left the queue) knows neither
    site.runner.answer("squeue", out(squeue_line("901", "PENDING", name="edge-unit-1") + "\n"))
    site.runner.always("sacct", out(""))
    site.runner.answer("sbatch", out("902\n"))
    site.cycle(site.agent(Submitter))
    assert [(w["id"], w["state"], w["batch_id"]) for w in site.read("workers")] == [
        (1, "queued", "901"),
        (2, "queued", "902"),
    ]
    assert len(site.runner.called("sbatch")) == 1  # never doubled


def test_the_queues_pilot_health_settings_reach_the_job_spec(make_site):
    site = make_site(max_queued_workers=1, looping_timeout="10m", min_free_disk_mb=2048)
    site.job(1, "fetched", spec=BIG)
    site.runner.always("sbatch", sbatch_ids(500))
    site.cycle(site.agent(Submitter))
    spec = protocol.load_job_spec(Path(site.one("workers")["access_point"]) / protocol.JOB_SPEC)
    assert (spec["pilot"]["looping_timeout"], spec["pilot"]["min_free_disk_mb"]) == (600.0, 2048.0)


def test_without_them_the_pilot_keeps_its_own_defaults(site):
    site.job(1, "fetched", spec=BIG)
    site.runner.always("sbatch", sbatch_ids(500))
    site.cycle(site.agent(Submitter))
    spec = protocol.load_job_spec(Path(site.read("workers")[0]["access_point"]) / protocol.JOB_SPEC)
    assert spec["pilot"]["looping_timeout"] == protocol.PILOT_DEFAULTS["looping_timeout"]
