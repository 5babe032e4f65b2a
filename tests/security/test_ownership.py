"""Ownership (issue 11, part 3): a job and its event ranges change only for the identity they were dispatched to.

Two clients against a real service on loopback in token mode: harvester B (and B's pilots) cannot update A's job,
finish/fail/fatal A's ranges or acquire ranges for A's job, in both dialects; single-job calls are HTTP 403, bulk
calls refuse the foreign entries per entry (ownership.py says why), and the central DB rows are unchanged. A still
can, an admin can. Last, the daemon runs a task to the end in embedded token mode (it acquires and reports through
the same calls).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jwt
import pytest
import requests

from central.conftest import backend, central_db, pg_cluster, token_central, trusted_central
from harvester_edge.central.server import EmbeddedCentral
from helpers import local_queue

PAYLOAD = {"kind": "python", "callable": "jumbo.payloads:simulate", "args": {"size": 8}}


def task_dict(**over) -> dict:
    base = {
        "name": "t",
        "payload": PAYLOAD,
        "events": 100,
        "events_per_range": 10,
        "seconds_per_event": 0.5,
        "jobs": 2,
        "max_attempts": 3,
    }
    return {**base, **over}


def mint(central: EmbeddedCentral, sub: str, scopes: list[str], **extra) -> str:
    """A token the service issued, with extra claims (a worker's pilot credential: harvester, worker)."""
    auth = central.authority
    token = auth.issue(sub, scopes)
    if not extra:
        return token
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode({**claims, **extra}, auth.secret, algorithm="HS256")


def snapshot(central: EmbeddedCentral) -> tuple:
    """Every row of jobs, ranges, tasks and workers: what 'the DB is unchanged' means."""
    db = central.service.db
    return tuple(
        tuple(tuple(r) for r in db.query(f"SELECT * FROM {table} ORDER BY 1, 2"))
        for table in ("jobs", "ranges", "tasks", "workers")
    )


class V1:
    def __init__(self, central: EmbeddedCentral, token: str | None) -> None:
        self.url = central.url + "/api/v1/"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=self.headers, timeout=10)

    def data(self, path: str, body: dict):
        resp = self.post(path, body)
        assert resp.status_code == 200 and resp.json()["success"], (path, resp.status_code, resp.text)
        return resp.json()["data"]

    def acquire_job(self, **extra) -> int:
        return self.data("pilot/acquire_jobs", {"site_name": "S", "n_jobs": 1, **extra})["jobs"][0]["PandaID"]

    def ranges(self, job_id: int, n: int = 3) -> list[str]:
        return [r["eventRangeID"] for r in self.data("event/acquire_event_ranges", {"job_id": job_id, "n_ranges": n})]

    def report(self, reports: list[dict], version: int = 0) -> dict:
        return self.data("event/update_event_ranges", {"event_ranges": json.dumps(reports), "version": version})


class Legacy:
    def __init__(self, central: EmbeddedCentral, token: str | None) -> None:
        self.url = central.url + "/server/panda/"
        self.headers = (
            {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if token
            else {"Accept": "application/json"}
        )

    def post(self, method: str, data: dict) -> requests.Response:
        return requests.post(self.url + method, data=data, headers=self.headers, timeout=10)


def reports(ids: list[str], status: str, version: int = 0) -> tuple[str, int]:
    entries = [{"eventRangeID": i, "eventStatus": status, "errorCode": 1 if status != "finished" else 0} for i in ids]
    if version == 1:
        entries = [{"zipFile": {"lfn": "z.zip"}, "eventRanges": entries}]
    return json.dumps(entries), version


@pytest.fixture
def two_harvesters(token_central):
    """Harvesters A and B (token subs site-a, site-b), one job and three ranges each."""
    token_central.service.submit_task(task_dict())
    a, b = (
        V1(token_central, mint(token_central, "site-a", ["harvester"])),
        V1(token_central, mint(token_central, "site-b", ["harvester"])),
    )
    ja, jb = a.acquire_job(), b.acquire_job()
    owners = dict(
        token_central.service.db.query("SELECT panda_id, harvester_id FROM jobs WHERE panda_id IN (?, ?)", (ja, jb))
    )
    assert owners == {ja: "site-a", jb: "site-b"}  # the token's identity, not a request parameter
    return a, b, ja, jb, a.ranges(ja), b.ranges(jb)


def test_v1_foreign_harvester_changes_nothing(token_central, two_harvesters):
    a, b, ja, jb, ra, rb = two_harvesters
    before = snapshot(token_central)
    for state in ("running", "finished", "failed"):
        resp = b.post("pilot/update_job", {"job_id": ja, "job_status": state, "pilot_error_code": 1})
        assert resp.status_code == 403 and resp.json()["success"] is False, resp.text
        assert f"job {ja}" in resp.json()["message"]
    resp = b.post("event/acquire_event_ranges", {"job_id": ja, "n_ranges": 5})
    assert resp.status_code == 403 and resp.json()["success"] is False
    resp = b.post("pilot/acquire_jobs", {"site_name": "S", "harvester_id": "site-a"})  # posing as A
    assert resp.status_code == 403 and "site-b" in resp.json()["message"]
    for status in ("finished", "failed", "fatal"):
        for version in (0, 1):
            text, version = reports(ra, status, version)
            answer = b.data("event/update_event_ranges", {"event_ranges": text, "version": version})
            assert answer["Results"] == ["refused"] * 3 and answer["Returns"] == [False] * 3, (status, version)
    answers = b.data("pilot/update_jobs_bulk", {"job_list": [{"jobId": ja, "state": "failed"}]})
    # one update_job envelope per job, as the real server answers
    assert answers[0]["success"] is False and answers[0]["data"]["StatusCode"] == 70
    assert "site-a" in answers[0]["data"]["ErrorDiag"] and "site-a" in answers[0]["message"]
    assert snapshot(token_central) == before

    # a mixed request: B's own entries are applied, A's refused
    answer = b.report(
        [{"eventRangeID": rb[0], "eventStatus": "finished"}, {"eventRangeID": ra[0], "eventStatus": "finished"}]
    )
    assert answer["Results"] == ["applied", "refused"]
    answers = b.data(
        "pilot/update_jobs_bulk", {"job_list": [{"jobId": jb, "state": "running"}, {"jobId": ja, "state": "running"}]}
    )
    assert [x["data"]["StatusCode"] for x in answers] == [0, 70]
    status = dict(
        token_central.service.db.query("SELECT task_id || '-' || process_id, status FROM ranges WHERE status != 0")
    )
    key = lambda rid: "-".join(rid.split("-")[i] for i in (0, 3))
    assert status[key(rb[0])] == 3 and status[key(ra[0])] == 1
    assert dict(
        token_central.service.db.query("SELECT panda_id, status FROM jobs WHERE panda_id IN (?, ?)", (ja, jb))
    ) == {ja: "sent", jb: "running"}

    # A still can; an admin can
    assert a.report([{"eventRangeID": ra[0], "eventStatus": "finished"}])["Results"] == ["applied"]
    assert a.data("pilot/update_job", {"job_id": ja, "job_status": "running"})["command"] == "NULL"
    assert len(a.ranges(ja, 2)) == 2
    admin = V1(token_central, mint(token_central, "ops", ["admin", "harvester"]))
    assert admin.report([{"eventRangeID": ra[1], "eventStatus": "failed", "errorCode": 1}])["Results"] == ["applied"]
    assert (
        admin.data("pilot/update_jobs_bulk", {"job_list": [{"jobId": ja, "state": "running"}]})[0]["data"]["StatusCode"]
        == 0
    )


def test_legacy_foreign_harvester_changes_nothing(token_central, two_harvesters):
    a, b, ja, jb, ra, rb = two_harvesters
    lb, la = (
        Legacy(token_central, b.headers["Authorization"][7:]),
        Legacy(token_central, a.headers["Authorization"][7:]),
    )
    before = snapshot(token_central)
    for state in ("running", "finished", "failed"):
        resp = lb.post("updateJob", {"jobId": ja, "state": state, "pilotErrorCode": 1})
        assert resp.status_code == 403 and f"job {ja}" in resp.text
    assert lb.post("getEventRanges", {"pandaID": ja, "nRanges": 5}).status_code == 403
    assert lb.post("getJob", {"siteName": "S", "harvester_id": "site-a"}).status_code == 403
    for status in ("finished", "failed", "fatal"):
        for version in (0, 1):
            text, version = reports(ra, status, version)
            resp = lb.post("updateEventRanges", {"eventRanges": text, "version": version})
            assert resp.status_code == 200 and resp.json()["Returns"] == [False] * 3, resp.text
    resp = lb.post("updateJobsInBulk", {"jobList": json.dumps([{"jobId": str(ja), "state": "failed"}])})
    ok, answers = json.loads(resp.text)
    assert ok is True and answers[0]["StatusCode"] == 70
    assert snapshot(token_central) == before

    resp = la.post("updateEventRanges", {"eventRanges": reports(ra[:1], "finished")[0]})
    assert resp.json()["Returns"] == [True]
    assert la.post("updateJob", {"jobId": ja, "state": "running"}).json()["StatusCode"] == 0
    assert len(la.post("getEventRanges", {"pandaID": ja, "nRanges": 2}).json()["eventRanges"]) == 2
    admin = Legacy(token_central, mint(token_central, "ops", ["admin", "harvester"]))
    assert admin.post("updateJob", {"jobId": jb, "state": "running"}).json()["StatusCode"] == 0


def test_pilot_credentials_are_held_to_their_harvester_and_worker(token_central):
    svc = token_central.service
    svc.submit_task(task_dict(jobs=3))
    harvester = V1(token_central, mint(token_central, "site-a", ["harvester"]))
    pilot = {
        w: V1(token_central, mint(token_central, f"site-a/worker/{w}", ["pilot"], harvester="site-a", worker=str(w)))
        for w in (1, 2, 3)
    }
    stranger = V1(token_central, mint(token_central, "site-b/worker/1", ["pilot"], harvester="site-b", worker="1"))
    job = harvester.acquire_job()  # acquired before any worker existed: worker_id NULL

    # a pilot of another harvester: 403, nothing written
    before = snapshot(token_central)
    assert stranger.post("event/acquire_event_ranges", {"job_id": job, "n_ranges": 2}).status_code == 403
    assert stranger.post("pilot/update_job", {"job_id": job, "job_status": "running"}).status_code == 403
    assert snapshot(token_central) == before

    # not yet reported which worker runs it: any pilot of site-a may (the contract's "no worker_id yet")
    got = pilot[1].ranges(job, 2)
    assert stranger.report([{"eventRangeID": got[0], "eventStatus": "finished"}])["Results"] == ["refused"]
    # the harvester reports its workers' jobs (Harvester's pandaid_list): worker 2 runs another job
    other = harvester.acquire_job()
    harvester.data(
        "harvester/update_workers",
        {
            "harvester_id": "site-a",
            "workers": [
                {"workerID": 1, "status": "running", "pandaid_list": [job]},
                {"workerID": 2, "status": "running", "pandaid_list": [other]},
            ],
        },
    )
    before = snapshot(token_central)
    assert pilot[2].post("event/acquire_event_ranges", {"job_id": job, "n_ranges": 2}).status_code == 403
    assert pilot[2].report([{"eventRangeID": got[0], "eventStatus": "failed"}])["Results"] == ["refused"]
    assert snapshot(token_central) == before
    assert pilot[1].report([{"eventRangeID": got[0], "eventStatus": "finished"}])["Results"] == ["applied"]
    assert pilot[3].ranges(job, 1)  # worker 3: nothing reported about it yet

    # a pilot acquiring jobs itself gets them for its own worker; it cannot name another harvester or worker
    assert pilot[1].post("pilot/acquire_jobs", {"site_name": "S", "harvester_id": "site-b"}).status_code == 403
    assert pilot[1].post("pilot/acquire_jobs", {"site_name": "S", "worker_id": 2}).status_code == 403
    own = pilot[3].acquire_job()
    assert tuple(svc.db.query("SELECT harvester_id, worker_id FROM jobs WHERE panda_id=?", (own,))[0]) == (
        "site-a",
        "3",
    )
    assert pilot[3].data("pilot/update_job", {"job_id": own, "job_status": "running"})["command"] == "NULL"
    assert pilot[2].post("pilot/update_job", {"job_id": own, "job_status": "failed"}).status_code == 403
    # a harvester cannot write another harvester's worker rows (they bound that harvester's pilots)
    resp = harvester.post("harvester/update_workers", {"harvester_id": "site-b", "workers": [{"workerID": 1}]})
    assert resp.status_code == 403


def test_trusted_mode_holds_a_named_harvester_to_its_jobs(trusted_central):
    trusted_central.service.submit_task(task_dict())
    client = V1(trusted_central, None)
    job = client.acquire_job(harvester_id="h1")
    before = snapshot(trusted_central)
    resp = client.post("pilot/update_job", {"job_id": job, "job_status": "running", "harvester_id": "h2"})
    assert resp.status_code == 403 and "h1" in resp.json()["message"]
    answers = client.data(
        "pilot/update_jobs_bulk", {"job_list": [{"jobId": job, "state": "running"}], "harvester_id": "h2"}
    )
    assert answers[0]["data"]["StatusCode"] == 70
    assert (
        Legacy(trusted_central, None)
        .post("updateJob", {"jobId": job, "state": "running", "harvester_id": "h2"})
        .status_code
        == 403
    )
    assert snapshot(trusted_central) == before
    # trusted mode trusts every local user: naming no harvester, or the right one, works
    assert client.data("pilot/update_job", {"job_id": job, "job_status": "running", "harvester_id": "h1"})
    assert client.data("pilot/update_job", {"job_id": job, "job_status": "running"})


@pytest.mark.mpi
def test_daemon_finishes_a_task_in_embedded_token_mode(tmp_path, central_db):
    central = {"mode": "embedded", "host": "127.0.0.1", "port": 0, "trusted": False}
    central.update({"db": central_db} if isinstance(central_db, str) else {})  # PostgreSQL, or work_dir/central.db
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from agents.conftest import Site, numpy_task  # the agents' real-daemon harness

    queue = local_queue(None)
    site = Site(
        tmp_path / "site",
        queue=queue,
        central=central,
    )
    try:
        task_id = site.submit_task(**numpy_task(200))
        site.start()
        task = site.wait_task(task_id, timeout=120)
        assert site.stop() == 0
        assert task["status"] == "finished", site.log_tail()
        site.assert_exactly_once(task_id, 200)
        with site.central_db() as conn:
            assert {
                r[0]
                for r in conn.execute(
                    "SELECT harvester_id FROM jobs WHERE task_id=? AND status != 'activated'", (task_id,)
                )
            } == {"t"}
        with site.harvester_db() as conn:
            assert conn.execute("SELECT count(*) FROM outbox WHERE state = 'rejected'").fetchone()[0] == 0
    finally:
        site.cleanup()


def test_may_change_follows_the_shared_contract():
    from harvester_edge.central.ownership import may_change

    job = {"panda_id": 1, "harvester_id": "H", "worker_id": None}
    bound = {**job, "worker_id": "7"}
    assert may_change(None, job) and may_change({"sub": "x", "scope": "admin"}, bound)
    assert may_change({"sub": "H", "scope": "harvester"}, bound)
    assert not may_change({"sub": "G", "scope": "harvester pilot"}, job)
    worker = {"sub": "H/worker/7", "scope": "pilot", "harvester": "H", "worker": "7"}
    assert may_change(worker, job) and may_change(worker, bound)
    assert not may_change({**worker, "worker": "8", "sub": "H/worker/8"}, bound)
    assert not may_change({**worker, "harvester": "G", "sub": "G/worker/7"}, job)
    assert may_change({"sub": "H", "scope": "pilot"}, bound)  # a standalone pilot: its sub
    assert not may_change({"sub": "H/worker/7", "scope": "pilot"}, job)  # no harvester claim: sub is not H
