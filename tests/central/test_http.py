"""Both dialects through a real uvicorn server on 127.0.0.1, and the client's error classes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
from fastapi.testclient import TestClient

from doubles import ListTrace
from harvester_edge.central.app import create_app, create_asgi
from harvester_edge.central.client import CentralClient, CentralRejected, CentralUnavailable
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.replay.recorder import RecordingTransport
from harvester_edge.seams.http import HttpTransport

from .conftest import db_settings, task_dict


@pytest.fixture
def client(trusted_central):
    trace = ListTrace()
    transport = RecordingTransport(HttpTransport(trusted_central.url, timeout=10), trace)
    c = CentralClient(transport, harvester_id="h1")
    c.records = trace.records
    yield c
    transport.close()


def test_v1_flow_through_client(client, trusted_central):
    assert client.is_alive()
    task_id = client.submit_task(task_dict(events=40))
    assert client.available_range_count(task_id) == 4
    jobs = client.acquire_jobs("SITE", "queue-a", n_jobs=3, harvester_id="h1", worker_id="7")
    assert [j["taskID"] for j in jobs] == [task_id] and jobs[0]["eventService"] == "True"
    pid = jobs[0]["PandaID"]
    assert client.update_job(pid, "running", core_count=4) == {"StatusCode": 0, "command": "NULL"}
    ranges = client.acquire_event_ranges(pid, task_id, task_id, 4)  # jobsetID = task id here
    assert [r["startEvent"] for r in ranges] == [1, 11, 21, 31]
    reports = [{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in ranges]
    assert client.update_event_ranges(reports)["Results"] == ["applied"] * 4
    assert client.update_event_ranges(reports)["Results"] == ["duplicate"] * 4  # a retried request
    answers = client.update_jobs_bulk(
        [{"jobId": pid, "state": "finished", "nEvents": 40}, {"jobId": 999999, "state": "finished"}], harvester_id="h1"
    )
    assert [a["StatusCode"] for a in answers] == [0, 50]
    assert client.get_job_status([pid])[0]["status"] == "finished"
    assert client.update_workers([{"workerID": 7, "status": "running"}]) == [True]
    assert client.heartbeat({"version": "0"}) is True
    assert client.update_worker_pilot_status("7", "started", node="n1") is True
    assert trusted_central.service.show_task(task_id)["status"] == "finished"
    assert all(r["kind"] == "http" and "status" in r for r in client.records)


def test_v1_rejections_are_envelopes_and_write_nothing(client, trusted_central):
    task_id = client.submit_task(task_dict(events=20))
    url = trusted_central.url + "/api/v1"
    before = trusted_central.service.show_task(task_id)
    for path, body in [
        ("pilot/update_job", b"{not json"),
        ("pilot/update_job", b'{"job_id": "x"}'),
        ("pilot/update_job", b'{"job_id": 1, "job_status": "weird"}'),
        ("pilot/acquire_jobs", b'{"site_name": "S", "n_jobs": -1}'),
        (
            "event/update_event_ranges",
            b'{"event_ranges": "[{\\"eventRangeID\\": \\"9-9-9-9-9\\", \\"eventStatus\\": \\"finished\\"}]"}',
        ),
        ("event/update_event_ranges", b'{"event_ranges": "nope"}'),
        ("task/kill", b'{"task_id": 4242}'),
    ]:
        resp = requests.post(f"{url}/{path}", data=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert resp.status_code == 200, (path, resp.text)
        doc = resp.json()
        assert doc["success"] is False and doc["message"], (path, doc)
    assert trusted_central.service.show_task(task_id) == before
    with pytest.raises(CentralRejected, match="does not exist"):
        client.update_job(123456, "running")


def test_v1_gzip_with_content_encoding(trusted_central):
    trusted_central.service.submit_task(task_dict())
    body = gzip.compress(json.dumps({"site_name": "S", "n_jobs": 1}).encode())
    resp = requests.post(
        trusted_central.url + "/api/v1/pilot/acquire_jobs",
        data=body,
        timeout=10,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.json()["data"]["jobs"][0]["PandaID"] == 1


def test_legacy_dialect(trusted_central):
    url = trusted_central.url + "/server/panda"
    task_id = trusted_central.service.submit_task(task_dict(events=30))
    # no job yet for another site? getJob hands the task's job; then none left -> StatusCode 20
    answer = parse_qs(requests.post(f"{url}/getJob", data={"siteName": "S", "node": "n1"}, timeout=10).text)
    pid = int(answer["PandaID"][0])
    assert answer["StatusCode"] == ["0"] and answer["eventService"] == ["True"]
    assert parse_qs(requests.post(f"{url}/getJob", data={"siteName": "S"}, timeout=10).text)["StatusCode"] == ["20"]
    # pilot 3.11: JSON body gzip-compressed WITHOUT Content-Encoding, booleans as strings
    body = gzip.compress(json.dumps({"pandaID": pid, "taskID": task_id, "nRanges": 2, "scattered": "False"}).encode())
    resp = requests.post(
        f"{url}/getEventRanges",
        data=body,
        timeout=10,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    doc = resp.json()
    assert doc["StatusCode"] == 0 and len(doc["eventRanges"]) == 2
    ranges = doc["eventRanges"]
    # urlencoded answer unless Accept asks for JSON
    reports = json.dumps([{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in ranges])
    text = requests.post(f"{url}/updateEventRanges", data={"eventRanges": reports, "version": "0"}, timeout=10).text
    parsed = parse_qs(text)
    assert parsed["StatusCode"] == ["0"] and json.loads(parsed["Returns"][0]) == [True, True]
    # version 1: zip-file groups
    more = requests.post(
        f"{url}/getEventRanges", data={"pandaID": pid, "nRanges": 5}, headers={"Accept": "application/json"}, timeout=10
    ).json()["eventRanges"]
    v1 = json.dumps(
        [
            {
                "zipFile": {"lfn": "a.zip", "numEvents": 10},
                "eventRanges": [{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in more],
            }
        ]
    )
    doc = requests.post(
        f"{url}/updateEventRanges",
        data={"eventRanges": v1, "version": 1},
        headers={"Accept": "application/json"},
        timeout=10,
    ).json()
    assert doc == {"StatusCode": 0, "Returns": [True], "Command": None}
    # updateJob (form) and updateJobsInBulk (json.dumps((ok, answers)))
    assert parse_qs(requests.post(f"{url}/updateJob", data={"jobId": pid, "state": "running"}, timeout=10).text) == {
        "StatusCode": ["0"],
        "command": ["NULL"],
    }
    bulk = requests.post(
        f"{url}/updateJobsInBulk",
        timeout=10,
        data={"jobList": json.dumps([{"jobId": pid, "state": "finished"}]), "harvester_id": "h"},
    )
    assert json.loads(bulk.text) == [True, [{"StatusCode": 0, "command": "NULL"}]]
    status = parse_qs(requests.get(f"{url}/getStatus", params={"ids": f"{pid} 999"}, timeout=10).text)
    assert status["status"] == ["finished+notfound"] and status["attemptNr"] == ["1+0"]
    assert trusted_central.service.show_task(task_id)["status"] == "finished"
    assert parse_qs(
        requests.post(
            f"{url}/updateWorkerPilotStatus",
            timeout=10,
            data={"site": "S", "workerID": "3", "harvesterID": "h", "status": "started"},
        ).text
    )["StatusCode"] == ["0"]
    assert requests.get(f"{url}/isAlive", timeout=10).text == "alive=yes"


def test_legacy_bad_input_gets_status_codes_and_writes_nothing(trusted_central):
    url = trusted_central.url + "/server/panda"
    task_id = trusted_central.service.submit_task(task_dict())
    before = trusted_central.service.show_task(task_id)
    cases = [
        ("updateJob", {"jobId": "abc", "state": "running"}, "50"),
        ("updateJob", {"jobId": 77, "state": "running"}, "50"),
        ("updateJob", {"jobId": 1, "state": "nonsense"}, "50"),
        ("getEventRanges", {"pandaID": 1, "nRanges": "many"}, "50"),
        ("updateEventRanges", {"eventRanges": "[{]"}, "50"),
        ("updateEventRanges", {"eventRanges": json.dumps([{"eventRangeID": "1-1-1-1-1"}])}, "50"),
    ]
    for method, data, code in cases:
        resp = requests.post(f"{url}/{method}", data=data, timeout=10)
        assert resp.status_code == 200 and parse_qs(resp.text)["StatusCode"] == [code], (method, resp.text)
    bad_gzip = requests.post(f"{url}/updateJob", data=b"\x1f\x8bnot really", timeout=10)
    assert parse_qs(bad_gzip.text)["StatusCode"] == ["50"]
    assert requests.post(f"{url}/dropDatabase", timeout=10).status_code == 403
    assert trusted_central.service.show_task(task_id) == before


def test_openapi_is_served(trusted_central):
    spec = requests.get(trusted_central.url + "/openapi.json", timeout=10).json()
    assert "/api/v1/pilot/acquire_jobs" in spec["paths"]
    assert {"/server/panda/getJob", "/server/panda/updateEventRanges"} <= set(spec["paths"])  # one per method
    assert requests.get(trusted_central.url + "/docs", timeout=10).status_code == 200


def test_client_tells_outage_from_rejection(tmp_path, trusted_central):
    url = trusted_central.url
    trusted_central.stop()
    client = CentralClient(HttpTransport(url, timeout=2), harvester_id="h1")
    with pytest.raises(CentralUnavailable):
        client.heartbeat()
    assert client.is_alive() is False


def test_embedded_stop_is_bounded_and_port_freed(tmp_path, central_db):
    import time

    from .conftest import start_central

    central = start_central(tmp_path, central_db, trusted=True)
    url = central.url
    t0 = time.monotonic()
    central.stop()
    assert time.monotonic() - t0 < 8
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/api/v1/system/is_alive", timeout=2)


def test_concurrent_http_acquires_never_share_a_range(trusted_central):
    import threading

    svc = trusted_central.service
    task_id = svc.submit_task(task_dict(events=3000, events_per_range=1, jobs=8))
    url = trusted_central.url + "/api/v1/event/acquire_event_ranges"
    jobs = [j["PandaID"] for j in svc.acquire_jobs("S", 8)]
    got: list[list[str]] = [[] for _ in jobs]

    def run(i: int) -> None:
        with requests.Session() as s:
            while True:
                data = s.post(url, json={"job_id": jobs[i], "task_id": task_id, "n_ranges": 13}, timeout=30).json()
                assert data["success"], data
                if not data["data"]:
                    return
                got[i].extend(r["eventRangeID"].split("-")[3] for r in data["data"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    flat = [p for g in got for p in g]
    assert len(flat) == 3000 and len(set(flat)) == 3000
    assert sum(1 for g in got if g) > 1


def test_watchdog_thread_of_the_server_fails_silent_jobs(tmp_path, central_db):
    import time

    from .conftest import start_central

    central = start_central(tmp_path, central_db, trusted=True, heartbeat_timeout=1, watchdog_interval=0.2)
    try:
        svc = central.service
        task_id = svc.submit_task(task_dict(events=20))
        job = svc.acquire_jobs("S")[0]["PandaID"]
        svc.acquire_event_ranges(job, task_id, 2)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if svc.job_status([job])[0]["status"] == "failed":
                break
            time.sleep(0.2)
        shown = svc.show_task(task_id)
        assert [j["dispatcher_error_code"] for j in shown["jobs"] if j["panda_id"] == job] == [100]
        assert shown["ranges"] == {"ready": 2}
    finally:
        central.stop()


def test_standalone_serve_stops_on_sigterm(tmp_path, central_db):
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import sys; from pathlib import Path; from types import SimpleNamespace;"
        "from harvester_edge.cli import central_serve;"
        "from harvester_edge.central.settings import CentralSettings;"
        "db = sys.argv[1] if sys.argv[1].startswith('postgresql://') else Path(sys.argv[1]);"
        "c = CentralSettings(db=db, files_dir=Path(sys.argv[2]), trusted=True);"
        "central_serve.main([], obj=SimpleNamespace(config=SimpleNamespace(central=c)),"
        " standalone_mode=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(central_db), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[4]
        assert requests.get(url + "/api/v1/system/is_alive", timeout=5).json()["success"] is True
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_hot_path_and_fastapi_routes_answer_alike(tmp_path, central_db):
    """The same request through FastPath and through the documented FastAPI route gives the same answer."""
    settings = db_settings(central_db, tmp_path, trusted=True)
    svc = CentralService.open(central_db, settings)
    task_id = svc.submit_task(task_dict(events=50, jobs=2))
    job = svc.acquire_jobs("S", 1)[0]["PandaID"]
    idle = next(j["panda_id"] for j in svc.show_task(task_id)["jobs"] if j["panda_id"] != job)
    plain = TestClient(create_app(settings, svc, None))
    # what the server runs checks each peer and Host (guard.py): this client is a loopback peer calling 127.0.0.1
    fast = TestClient(create_asgi(settings, svc, None), client=("127.0.0.1", 50000), base_url="http://127.0.0.1")
    # (url, body, whether both must succeed): the accepted ones may be sent twice (running -> running is legal)
    requests_ = [
        ("/api/v1/pilot/update_job", b'{"job_id": %d, "job_status": "running"}' % job, True),
        ("/api/v1/pilot/update_jobs_bulk", b'{"job_list": [{"jobId": %d, "state": "running"}]}' % job, True),
        ("/api/v1/event/update_event_ranges", b'{"event_ranges": "[]", "version": 0}', True),
        ("/api/v1/pilot/update_job", b'{"job_id": %d, "job_status": "running"}' % idle, False),
        ("/api/v1/pilot/update_job", b'{"job_id": "x"}', False),
        ("/api/v1/pilot/update_job", b"{not json", False),
        ("/api/v1/event/update_event_ranges", b'{"event_ranges": "[]", "version": 3}', False),
        ("/api/v1/event/acquire_event_ranges", b'{"job_id": 77, "n_ranges": 5}', False),
        ("/api/v1/pilot/update_job", b'{"job_id": 1, "job_status": ' + b"[" * 40 + b"]" * 40 + b"}", False),
        ("/api/v1/pilot/update_job", b'{"job_id": 1, "job_status": "\\ud800"}', False),
    ]
    for url, body, accepted in requests_:
        a = plain.post(url, content=body, headers={"Content-Type": "application/json"})
        b = fast.post(url, content=body, headers={"Content-Type": "application/json"})
        assert (a.status_code, a.json()["success"]) == (b.status_code, b.json()["success"]), url
        assert a.json()["success"] is accepted, (url, body, a.json())
        if accepted:
            assert a.json() == b.json()
    svc.close()


def test_a_bug_is_logged_and_answered_in_the_dialect(tmp_path, central_db, caplog):
    """The last-resort handlers (FastAPI and FastPath): a traceback in the log, a 500 in the dialect's format."""
    settings = db_settings(central_db, tmp_path, trusted=True)
    svc = CentralService.open(central_db, settings)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    svc.heartbeat = svc.update_job_op = svc.update_job = broken
    client = TestClient(
        create_asgi(settings, svc, None),
        raise_server_exceptions=False,
        client=("127.0.0.1", 50000),
        base_url="http://127.0.0.1",
    )
    v1 = client.post("/api/v1/harvester/heartbeat", json={"harvester_id": "h"})
    hot = client.post("/api/v1/pilot/update_job", json={"job_id": 1, "job_status": "running"})
    legacy = client.post("/server/panda/updateJob", data={"jobId": 1, "state": "running"})
    assert [r.status_code for r in (v1, hot, legacy)] == [500, 500, 500]
    assert v1.json()["success"] is False and hot.json()["success"] is False
    assert "StatusCode=" in legacy.text
    assert sum("RuntimeError: a bug" in (r.exc_text or "") for r in caplog.records) == 3
    svc.close()


def test_monitor_pages_and_metrics_read_the_services_own_database(tmp_path, central_db):
    """The monitor's reader processes and /metrics read the database the service writes (on PostgreSQL: not a
    SQLite file made empty in files_dir), and find the harvester DB next to the service's files."""
    from types import SimpleNamespace

    from harvester_edge.server import embedded_central
    from harvester_edge.web.router import harvester_db_path

    central = embedded_central(db_settings(central_db, tmp_path, host="127.0.0.1", port=0, trusted=True))
    central.start()
    try:
        task_id = central.service.submit_task(task_dict(name="seen-by-the-monitor", events=30))
        page = requests.get(f"{central.url}/monitor/task/{task_id}", timeout=30)
        assert page.status_code == 200 and "seen-by-the-monitor" in page.text
        metrics = requests.get(central.url + "/metrics", timeout=30).text
        assert 'harvester_edge_central_tasks{state="defined"} 1.0' in metrics, metrics[:2000]
        assert 'harvester_edge_central_event_ranges{state="ready"} 3.0' in metrics
    finally:
        central.stop()
    app = SimpleNamespace(state=SimpleNamespace(settings=db_settings(central_db, tmp_path)))
    assert harvester_db_path(app) == tmp_path / "harvester.db"  # type: ignore[arg-type]
    assert not (tmp_path / "central.db").exists() or isinstance(central_db, Path)
