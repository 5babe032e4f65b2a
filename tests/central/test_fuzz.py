"""Fuzzing every endpoint of the OpenAPI spec (and the legacy methods) with hypothesis: never a 500.

Bodies are random JSON built around each endpoint's own field names, so validation passes often enough to reach
the service. The app runs in-process (TestClient) with raise_server_exceptions: any unhandled error fails.
"""
from __future__ import annotations

import gzip
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester_edge.central.app import create_app, create_asgi
from harvester_edge.central.legacy import METHODS
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings

from .conftest import task_dict

scalars = (st.none() | st.booleans() | st.integers(0, 4) | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=20)
           | st.sampled_from(["1", "1-1-1-1-1", "finished", "failed", "running", "True", "False", "", "-1",
                              "1-1-1-1-1-1", "[]", "{}", "99999999999999999999999", "\u00b2", "1 \u0663"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                    max_size=4), max_leaves=12)
PANDA_KEYS = ["jobId", "state", "eventRangeID", "eventStatus", "errorCode", "nEvents", "pilotErrorCode",
              "workerID", "zipFile", "eventRanges", "coreCount", "transExitCode"]


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "central.db"
    settings = CentralSettings(db=path, trusted=True)
    svc = CentralService.open(path, settings)
    for _ in range(2):
        svc.submit_task(task_dict(events=50, jobs=2))
    job = svc.acquire_jobs("S", 1)[0]["PandaID"]
    svc.acquire_event_ranges(job, None, 3)
    asgi = create_asgi(settings, svc, None)  # what the server runs: Guard, FastPath, FastAPI
    # trusted mode checks each peer and Host: the test client is a loopback peer calling 127.0.0.1
    with TestClient(asgi, raise_server_exceptions=True, **LOOPBACK) as client:
        yield client, asgi.app.app
    svc.close()


LOOPBACK = {"client": ("127.0.0.1", 50000), "base_url": "http://127.0.0.1"}


def operations(app) -> list[tuple[str, str, list[str]]]:
    spec = app.openapi()
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            fields = [p["name"] for p in op.get("parameters", [])]
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref"))
            if ref:
                fields += list(spec["components"]["schemas"][ref.rsplit("/", 1)[1]].get("properties", {}))
            ops.append((method.upper(), path, fields + PANDA_KEYS))
    return ops


def body_for(fields: list[str]):
    return st.dictionaries(st.sampled_from(fields), values, max_size=6) | values


def check(resp, path: str) -> None:
    assert resp.status_code < 500, (path, resp.status_code, resp.text[:300])
    if path.startswith("/api/v1/") and resp.status_code != 404:
        doc = resp.json()
        assert set(doc) == {"success", "message", "data"}, doc


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_v1_endpoints_never_500(app_client, data):
    client, app = app_client
    method, path, fields = data.draw(st.sampled_from([o for o in operations(app)
                                                      if not o[1].startswith("/server")]))
    payload = data.draw(body_for(fields))
    if method == "GET":
        params = {k: json.dumps(v) if not isinstance(v, str) else v
                  for k, v in (payload.items() if isinstance(payload, dict) else [])}
        resp = client.get(path, params=params)
    else:
        raw = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if data.draw(st.booleans()):
            raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
        resp = client.post(path, content=raw, headers=headers)
    check(resp, path)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_legacy_methods_never_500(app_client, data):
    client, _ = app_client
    method = data.draw(st.sampled_from(sorted(METHODS) + ["isAlive", "nothing"]))
    keys = ["jobId", "state", "pandaID", "taskID", "nRanges", "eventRanges", "jobList", "version", "ids",
            "siteName", "nJobs", "workerID", "harvesterID", "status", "client_name", "token_key"]
    params = data.draw(st.dictionaries(st.sampled_from(keys), values, max_size=6))
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    how = data.draw(st.sampled_from(["form", "json", "gzip", "junk"]))
    if how == "form":
        resp = client.post(f"/server/panda/{method}", data=form)
    elif how == "junk":
        resp = client.post(f"/server/panda/{method}", content=data.draw(st.binary(max_size=40)))
    else:
        raw = json.dumps(params).encode()
        resp = client.post(f"/server/panda/{method}", content=gzip.compress(raw) if how == "gzip" else raw,
                           headers={"Content-Type": "application/json"})
    check(resp, method)


@pytest.mark.parametrize("path,kwargs", [
    ("/server/panda/updateJob", {"data": {"jobId": 1, "state": "running", "nEvents": "9" * 25}}),
    ("/server/panda/updateJob", {"data": {"jobId": 1, "state": "running", "coreCount": "-" + "9" * 25}}),
    ("/server/panda/updateJob", {"json": {"jobId": 1, "state": "running", "node": {"a": 1}}}),
    ("/api/v1/pilot/update_jobs_bulk", {"json": {"job_list": [{"jobId": 1, "state": "running", "nEvents": 10**30}]}}),
    ("/server/panda/getStatus", {"data": {"ids": "1 \u00b2"}}),
    ("/server/panda/updateJobsInBulk", {"data": {"jobList": '[{"jobId": "\u00b2", "state": "running"}]'}}),
    ("/api/v1/event/update_event_ranges", {"json": {"event_ranges": [{"eventRangeID": "1-1-1-1-1",
                                                                      "eventStatus": "failed",
                                                                      "errorCode": "\u00b2"}]}}),
    ("/api/v1/harvester/update_workers", {"json": {"harvester_id": "h", "workers": [{"workerID": 1, "status": [1]}]}}),
    ("/api/v1/event/update_event_ranges", {"json": {"event_ranges": [{"eventRangeID": "1-1-1-1-0",
                                                                      "eventStatus": "failed",
                                                                      "errorCode": "1" * 30}]}}),
])
def test_found_by_fuzzing(app_client, path, kwargs):
    client, _ = app_client
    resp = client.post(path, **kwargs)
    check(resp, path)
    # refused, not applied
    if path.startswith("/api/v1/"):
        doc = resp.json()
        assert doc["success"] is False or doc["data"][0]["StatusCode"] != 0, doc
    else:
        assert "StatusCode=0&" not in resp.text


def test_hot_path_and_fastapi_routes_answer_alike(tmp_path):
    """The same request through FastPath and through the documented FastAPI route gives the same answer."""
    path = tmp_path / "central.db"
    settings = CentralSettings(db=path, trusted=True)
    svc = CentralService.open(path, settings)
    task_id = svc.submit_task(task_dict(events=50, jobs=2))
    job = svc.acquire_jobs("S", 1)[0]["PandaID"]
    idle = next(j["panda_id"] for j in svc.show_task(task_id)["jobs"] if j["panda_id"] != job)
    plain = TestClient(create_app(settings, svc, None))
    fast = TestClient(create_asgi(settings, svc, None), **LOOPBACK)
    # (url, body, whether both must succeed): the accepted ones may be sent twice (running -> running is legal)
    requests_ = [("/api/v1/pilot/update_job", b'{"job_id": %d, "job_status": "running"}' % job, True),
                 ("/api/v1/pilot/update_jobs_bulk", b'{"job_list": [{"jobId": %d, "state": "running"}]}' % job,
                  True),
                 ("/api/v1/event/update_event_ranges", b'{"event_ranges": "[]", "version": 0}', True),
                 ("/api/v1/pilot/update_job", b'{"job_id": %d, "job_status": "running"}' % idle, False),
                 ("/api/v1/pilot/update_job", b'{"job_id": "x"}', False),
                 ("/api/v1/pilot/update_job", b'{not json', False),
                 ("/api/v1/event/update_event_ranges", b'{"event_ranges": "[]", "version": 3}', False),
                 ("/api/v1/event/acquire_event_ranges", b'{"job_id": 77, "n_ranges": 5}', False)]
    for url, body, accepted in requests_:
        a = plain.post(url, content=body, headers={"Content-Type": "application/json"})
        b = fast.post(url, content=body, headers={"Content-Type": "application/json"})
        assert (a.status_code, a.json()["success"]) == (b.status_code, b.json()["success"]), url
        assert a.json()["success"] is accepted, (url, body, a.json())
        if accepted:
            assert a.json() == b.json()
    svc.close()
