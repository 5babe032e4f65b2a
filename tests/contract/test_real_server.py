"""Our CentralClient against the real PanDA server's own /api/v1 functions (panda-server 1.0.4): every call the
harvester makes is accepted exactly as sent (names, types, JSON vs query, Origin + token), what the database layer
is asked proves the server understood it, and the client parses the answer the real function builds."""

from __future__ import annotations

import calendar
import json

import pytest

from contract.harness import ORIGIN, TOKEN
from harvester_edge.central.client import CentralClient, CentralRejected, CentralServerError
from harvester_edge.seams.http import HttpTransport


@pytest.fixture
def client(panda_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    transport = HttpTransport(panda_server.url, timeout=20)
    c = CentralClient(transport, token_file=token_file, origin=ORIGIN, harvester_id="edge-h1")
    yield c
    transport.close()


def test_jobs_calls_are_accepted_and_answers_parsed(client, panda_server):
    assert client.is_alive()  # the real answer is data null
    jobs = client.acquire_jobs("EDGE_SITE", queue="edge-q", n_jobs=2, harvester_id="edge-h1", worker_id=7)
    assert len(jobs) == 2
    job = jobs[0]
    assert (job["taskID"], job["jobsetID"], job["coreCount"], job["maxWalltime"], job["minRamCount"]) == (
        4242,
        77,
        8,
        7200,
        16000,
    )
    assert job["transformation"] == "https://example.org/trf/run.sh" and job["jobPars"] == "--events 100 --seed 7"
    get_jobs = panda_server.calls("getJobs")[0]["args"]
    assert get_jobs[:2] == [2, "EDGE_SITE"] and "edge-h1" in get_jobs and 7 in get_jobs
    assert client.acquire_jobs("EDGE_SITE", worker_id="8")  # a worker id as text goes as the int it is
    assert client.acquire_jobs("EMPTY_SITE") == []  # "No jobs in PanDA" is success=false: no error, no job

    pid, other = job["PandaID"], jobs[1]["PandaID"]
    status = client.get_job_status([pid, 123])  # job_ids repeated in the query string
    assert status == [
        {"job_id": pid, "status": "sent", "attempt_number": 1},
        {"job_id": 123, "status": "not found", "attempt_number": 0},
    ]

    end = calendar.timegm((2026, 11, 28, 20, 30, 5, 0, 0, 0))
    answers = client.update_jobs_bulk(
        [
            {"jobId": pid, "state": "running", "nEvents": 5},
            {"jobId": other, "state": "finished", "nEvents": 10, "endTime": end},
            {"jobId": 666, "state": "running"},
        ],
        harvester_id="edge-h1",
    )
    assert [(a["ok"], a["StatusCode"], a["command"]) for a in answers] == [
        (True, 0, "NULL"),
        (True, 0, "NULL"),
        (True, 0, "tobekilled"),
    ]
    updates = {c["args"][0]: c["args"] for c in panda_server.calls("updateJobStatus")}
    assert updates[pid][1] == "running" and updates[pid][2]["nEvents"] == "5"
    # finished -> "holding" until the server's adder runs; the end time parsed from "%Y-%m-%d %H:%M:%S"
    assert updates[other][1] == "holding" and updates[other][2]["endTime"] == "2026-11-28 20:30:05"
    assert client.get_job_status([other])[0]["status"] == "holding"


def test_event_calls_are_accepted_with_the_real_jobset_id(client, panda_server):
    pid = client.acquire_jobs("EDGE_SITE")[0]["PandaID"]
    assert client.available_range_count(4242, pid, 77) == 3
    assert panda_server.calls("checkEventsAvailability")[0]["args"] == [pid, 77, 4242]
    ranges = client.acquire_event_ranges(pid, 77, task_id=4242, n_ranges=2)
    assert [r["eventRangeID"] for r in ranges] == [f"4242-{pid}-1-1-1", f"4242-{pid}-1-2-1"]
    assert panda_server.calls("getEventRanges")[0]["args"][:4] == [pid, 77, 4242, 2]
    reports = [{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in ranges]
    # the real server writes, then fails on its set-literal answer: HTTP 500, told apart from an outage
    with pytest.raises(CentralServerError) as err:
        client.update_event_ranges(reports)
    assert "unhashable type" in err.value.body
    written = panda_server.calls("updateEventRanges")
    assert len(written) == 1 and json.loads(written[0]["args"][0]) == reports and written[0]["args"][1] == 0


def test_harvester_worker_and_credential_calls(client, panda_server):
    assert client.update_workers([{"workerID": 7, "status": "running", "computingSite": "EDGE_SITE"}]) == [True]
    assert panda_server.calls("updateWorkers")[0]["args"][0] == "edge-h1"
    client.heartbeat({"version": "1"})
    assert panda_server.calls("harvesterIsAlive")[0]["args"][2:] == ["edge-h1", {"version": "1"}]
    client.update_worker_pilot_status("7", "started", node="node-1")
    assert panda_server.calls("updateWorkerPilotStatus")[0]["args"] == ["7", "edge-h1", "started", "node-1"]
    assert client.get_token_key("pilot-edge") == "key-latest"  # data {"tokenKey": ...}
    assert client.get_access_token("pilot-edge", "key-old") == "access-token-for-pilot-edge"  # {"user_proxy": ...}
    with pytest.raises(CentralRejected, match="token key is invalid"):
        client.get_access_token("pilot-edge", "forged")


def test_every_request_carried_origin_token_and_json(client, panda_server):
    client.is_alive()
    client.acquire_jobs("EDGE_SITE")
    client.update_worker_pilot_status("7", "finished")
    http = panda_server.calls("http")
    assert http and all(r["kwargs"]["origin"] == ORIGIN for r in http)
    assert all(r["kwargs"]["content_type"] == "application/json" for r in http if r["args"][0] == "POST")
    assert all(r["kwargs"]["accept"] == "application/json" for r in http)


def test_drift_is_caught_by_the_real_validation(client, panda_server):
    """The harness is the real request validation: an unknown name or a wrong type is refused, as it would be."""
    with pytest.raises(CentralRejected, match="Argument error"):
        client.call(
            "POST",
            "pilot/update_worker_status",
            body={"harvester_id": "h", "worker_id": "1", "status": "started", "site": "S"},
        )
    with pytest.raises(CentralRejected, match="Type error"):
        client.call("POST", "event/acquire_event_ranges", body={"job_id": "1", "jobset_id": 2})
    answers = client.update_jobs_bulk([{"jobId": 1, "state": "running", "notAField": 1}])
    assert not answers[0]["ok"] and "Argument error" in answers[0]["ErrorDiag"]
    with pytest.raises(CentralRejected, match="Argument error"):  # the call we used to make: task_id alone
        client.call("GET", "event/get_available_event_range_count", params={"task_id": 4242})
    with pytest.raises(CentralRejected, match="expecting GET"):
        client.call("POST", "event/get_available_event_range_count", body={})


def test_a_missing_token_or_origin_is_refused(panda_server, tmp_path):
    transport = HttpTransport(panda_server.url, timeout=20)
    from harvester_edge.central.client import CentralAuthFailed

    no_origin = CentralClient(transport, token=TOKEN)
    with pytest.raises(CentralAuthFailed):
        no_origin.acquire_jobs("EDGE_SITE")
    token_file = tmp_path / "rotating-token"
    token_file.write_text("expired-token")
    rotating = CentralClient(transport, token_file=token_file, origin=ORIGIN)
    with pytest.raises(CentralAuthFailed):
        rotating.acquire_jobs("EDGE_SITE")
    token_file.write_text(TOKEN)  # renewed by an external tool: the next call reads it
    assert rotating.acquire_jobs("EDGE_SITE")


def test_a_method_the_server_lacks_is_asked_once_an_hour_with_no_token_renewal(client):
    """The real server answers a method it does not serve (harvester/get_failed_tasks is harvester-edge's) with
    403 "method ... is forbidden": not a credentials problem (no renewal), and not asked again for an hour."""
    from harvester_edge.central.client import ROUTE_RECHECK, CentralAuthFailed, CentralRouteMissing

    renewals, sent, real = [], [], client.transport.request
    client.renewer = lambda force=False: renewals.append(force) or True
    client.transport.request = lambda method, path, **kw: sent.append(path) or real(method, path, **kw)
    for _ in range(3):
        with pytest.raises(CentralRouteMissing, match="has no such method") as caught:
            client.failed_tasks(harvester_id="edge-h1")
        assert not isinstance(caught.value, CentralAuthFailed)
    assert sent == ["/api/v1/harvester/get_failed_tasks"] and renewals == []  # one request, no renewal
    assert client.acquire_jobs("EDGE_SITE")  # other methods are asked as ever
    now = client.reach.clock()
    client.reach.clock = lambda: now + ROUTE_RECHECK + 1
    with pytest.raises(CentralRouteMissing):
        client.failed_tasks(harvester_id="edge-h1")
    assert sent.count("/api/v1/harvester/get_failed_tasks") == 2  # an hour later: asked again


def test_a_missing_method_answer_in_broken_bytes_is_still_read():
    """A 403 'method ... is forbidden' whose method name is not UTF-8 (a broken or hostile server) is still the
    missing-method error, its text shown with replacement characters."""
    from harvester_edge.central.client import CentralRouteMissing, parse_envelope
    from harvester_edge.seams.http import HttpResult

    body = b"ERROR : method get_\xff\xfe is forbidden"
    with pytest.raises(CentralRouteMissing, match="no such method"):
        parse_envelope("GET", "x/y", HttpResult(403, {}, body, 0.0))


def test_a_server_timeout_is_transient_not_a_refusal(start_panda, tmp_path):
    """The real server answers success=false "TimeOut" when its database layer fails or is slow: the client keeps
    such a message for later (CentralUnavailable), it must never park range reports as rejected."""
    from harvester_edge.central.client import CentralTimeout, CentralUnavailable

    server = start_panda(tmp_path, env_extra={"PANDA_CONTRACT_RANGES_FAIL": "raise"})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    client = CentralClient(HttpTransport(server.url, timeout=20), token_file=token_file, origin=ORIGIN)
    with pytest.raises(CentralTimeout) as err:
        client.update_event_ranges([{"eventRangeID": "4242-1-1-1-1", "eventStatus": "finished"}])
    assert isinstance(err.value, CentralUnavailable) and not isinstance(err.value, CentralRejected)
