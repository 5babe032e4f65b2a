"""Persistent pilots' agent: an open job request gets one job (a local one first, else the central service's),
linked with the request's sequence so a crash before the answer re-sends the same job; kill/drain answer "stop";
queues without `persistent` are never read."""

from __future__ import annotations

from pathlib import Path

from doubles import Outage, panda_job, sbatch_ids
from harvester_edge.agents.feeder import Feeder
from harvester_edge.agents.persistent import PersistentPilots
from harvester_edge.operations import set_draining
from harvester_edge.seams.files import PilotFiles
from harvester_edge.store import jobs, workers
from jumbo import protocol

PERSISTENT = {"persistent": {"idle_timeout": "10m"}}


def answers(ap: Path) -> list[protocol.NewJobs]:
    return [protocol.load_new_jobs(p) for _, p in protocol.pending(ap, protocol.NEW_JOBS)]


def idle(site, worker_id: int = 7, jobs_: tuple[int, ...] = (1,), seq: int = 1, **cols) -> Path:
    ap = site.worker(worker_id, "running", jobs_, **cols)
    protocol.write_job_request(ap, seq)
    return ap


def links(site) -> list[tuple]:
    return [
        (r["panda_id"], r["worker_id"], r["request_seq"], r["left_at"] is not None) for r in site.read("job_workers")
    ]


def test_a_fetched_job_goes_to_the_idle_pilot_and_its_old_job_settles(make_site):
    site = make_site(**PERSISTENT)
    site.job(1, "running", no_more_ranges=1)
    site.job(2, "fetched")
    ap = idle(site)
    site.cycle(site.agent(PersistentPilots))
    (answer,) = answers(ap)
    assert [j["PandaID"] for j in answer.jobs] == [2] and answer.seq == 1
    assert not protocol.pending(ap, protocol.JOB_REQUESTS)  # consumed
    assert links(site) == [(1, 7, None, True), (2, 7, 1, False)]
    assert site.one("jobs", panda_id=2)["state"] == "running"
    assert site.transport.calls == []  # a local job: no call to the central service
    conn = site.store.connection()
    assert [r["panda_id"] for r in jobs.without_work(conn)] == [1]  # the left job settles, the worker runs on
    assert [w["id"] for w in workers.live_of_job(conn, 1)] == []


def test_no_local_job_acquires_one_from_the_central_service(make_site):
    site = make_site(**PERSISTENT)
    site.job(1, "running", no_more_ranges=1)
    ap = idle(site)
    site.transport.on("pilot/acquire_jobs", {"jobs": [panda_job(5)]})
    site.cycle(site.agent(PersistentPilots))
    (call,) = site.transport.called("pilot/acquire_jobs")
    assert call.body["n_jobs"] == 1 and call.body["computing_element"] == "q"
    assert [j["PandaID"] for j in answers(ap)[0].jobs] == [5]


def test_no_job_anywhere_leaves_the_request_open_and_an_outage_too(make_site):
    site = make_site(**PERSISTENT)
    site.job(1, "running", no_more_ranges=1)
    ap = idle(site)
    site.transport.on("pilot/acquire_jobs", {"jobs": []})
    site.cycle(site.agent(PersistentPilots))
    site.transport.on("pilot/acquire_jobs", Outage)
    site.cycle(site.agent(PersistentPilots))
    assert answers(ap) == [] and len(protocol.pending(ap, protocol.JOB_REQUESTS)) == 1
    assert links(site) == [(1, 7, None, True)]  # the waiting pilot is done with job 1: it settles meanwhile
    assert [r["panda_id"] for r in jobs.without_work(site.store.connection())] == [1]


def test_a_crash_before_the_answer_sends_the_same_job_again(make_site, monkeypatch):
    site = make_site(**PERSISTENT)
    site.job(1, "running", no_more_ranges=1)
    site.job(2, "fetched")
    site.job(3, "fetched")
    ap = idle(site)
    agent = site.agent(PersistentPilots)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PilotFiles, "write_new_jobs", crash)
    site.cycle(agent)  # committed, not written
    monkeypatch.undo()
    assert answers(ap) == []
    site.cycle(site.agent(PersistentPilots))
    assert [j["PandaID"] for j in answers(ap)[0].jobs] == [2]  # not job 3
    assert site.one("jobs", panda_id=3)["state"] == "fetched"


def test_a_worker_to_be_killed_or_a_draining_queue_is_told_to_stop(make_site):
    site = make_site(**PERSISTENT)
    site.job(1, "running", no_more_ranges=1)
    site.job(2, "fetched")
    killed = idle(site, 7, kill_requested=1)
    site.cycle(site.agent(PersistentPilots))
    assert answers(killed)[0].stop == "worker to be killed" and not answers(killed)[0].jobs
    drained = idle(site, 8)
    set_draining(site.config, ["q"], draining=True)
    site.cycle(site.agent(PersistentPilots))
    assert answers(drained)[0].stop == "queue draining"
    assert site.one("jobs", panda_id=2)["state"] == "fetched"  # nobody took it


def test_a_bad_job_request_is_set_aside(make_site):
    site = make_site(**PERSISTENT)
    ap = site.worker(7, "running", ())
    (ap / f"{protocol.JOB_REQUESTS}.1.json").write_text('{"protocol": 1, "seq": "x"}')
    site.cycle(site.agent(PersistentPilots))
    assert (ap / f"{protocol.JOB_REQUESTS}.1.json.bad").exists() and answers(ap) == []


def test_queues_without_the_option_are_never_read(make_site):
    site = make_site()
    site.job(2, "fetched")
    ap = idle(site, jobs_=(2,))
    agent = site.agent(PersistentPilots)
    agent.cycle()
    assert answers(ap) == [] and agent.stats.cycles == 0


def test_the_first_range_request_after_a_hand_over_wakes_the_feeder(make_site):
    site = make_site(**PERSISTENT)
    site.job(1, "running", no_more_ranges=1)
    site.job(2, "fetched")
    ap = idle(site)
    woken: list[str] = []
    site.ctx.wake = woken.append
    agent = site.agent(PersistentPilots)
    site.cycle(agent)
    assert woken == []
    protocol.write_event_request(ap, 5, {2: {"pandaID": 2, "taskID": 2, "nRanges": 2}})
    site.cycle(agent)
    site.cycle(agent)  # the same request: no second wake
    assert woken == [Feeder.name]


def test_the_submitter_makes_no_new_worker_while_a_pilot_waits_for_a_job(make_site):
    from harvester_edge.agents.submitter import Submitter

    site = make_site(max_queued_workers=1, **PERSISTENT)
    site.job(1, "running", no_more_ranges=1)
    site.job(2, "fetched")
    idle(site)
    site.cycle(site.agent(Submitter))
    assert [w["id"] for w in site.read("workers")] == [7]
    site.cycle(site.agent(PersistentPilots))  # the idle pilot takes job 2; nothing waits any more
    site.job(3, "fetched")
    site.runner.always("sbatch", sbatch_ids(500))
    site.cycle(site.agent(Submitter))
    assert len(site.read("workers")) == 2  # job 3 gets a new worker


def test_an_idle_pilot_takes_its_own_job_again_when_its_ranges_came_back(make_site):
    site = make_site(**PERSISTENT)
    site.job(1, "running", no_more_ranges=0)  # a failed range of job 1 is ready again
    ap = idle(site)
    site.cycle(site.agent(PersistentPilots))
    assert [j["PandaID"] for j in answers(ap)[0].jobs] == [1]
    assert links(site) == [(1, 7, 1, False)]
