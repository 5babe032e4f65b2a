"""Trusted mode and browsers (issue 11, item 4): a hostile web page and a foreign peer against the real service.

The service runs for real (uvicorn on 127.0.0.1, or on a unix socket); each attack is sent as a browser would
send it (Origin, Host, Sec-Fetch-Site, simple content types, GET links) and the test then reads the database to
prove nothing was written. A foreign TCP peer cannot be produced on loopback, so that check runs the same ASGI
stack the server runs (Guard + FastPath + FastAPI) with a foreign client address, plus pure checks of the Guard.
"""

from __future__ import annotations

import functools
import grp
import http.server
import json
import logging
import os
import re
import stat
import threading
from pathlib import Path

import httpx
import pytest
import requests
from fastapi.testclient import TestClient

from central.conftest import backend, central_db, db_rows, db_settings, pg_cluster
from harvester_edge.central.guard import Guard
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.server import central_asgi, embedded_central
from helpers import wait_for
from web.conftest import browser

PAYLOAD = {"kind": "python", "callable": "jumbo.payloads:simulate", "args": {"size": 8}}
TASK = {
    "name": "t",
    "payload": PAYLOAD,
    "events": 100,
    "events_per_range": 10,
    "seconds_per_event": 0.5,
    "jobs": 1,
    "max_attempts": 3,
}
EVIL = "http://evil.example"


def seed(db: Path | str, files: Path) -> dict:
    """A task with one dispatched job and a suggested error rule (an unknown failure code)."""
    svc = CentralService.open(db, db_settings(db, files))
    try:
        task_id = svc.submit_task(dict(TASK, jobs=2))
        job = svc.acquire_jobs("S", harvester_id="h1", worker_id="1")[0]
        ranges = svc.acquire_event_ranges(job["PandaID"], task_id, 2)
        svc.update_event_ranges(
            [
                {
                    "eventRangeID": r["eventRangeID"],
                    "eventStatus": "failed",
                    "errorCode": 65,
                    "errorDiag": "payload crashed",
                }
                for r in ranges
            ]
        )
        return {"task_id": task_id, "panda_id": job["PandaID"], "rule": svc.list_errors("suggested")[0]["id"]}
    finally:
        svc.close()


def snapshot(db: Path | str) -> dict:
    """Everything an attack could change: tasks, jobs (state, attempt), ranges, rules, token keys."""
    return {
        table: sorted(db_rows(db, f"SELECT * FROM {table}"), key=repr)
        for table in ("tasks", "jobs", "ranges", "error_classes", "token_keys")
    }


@pytest.fixture
def live(tmp_path, central_db):
    """(url, ids, db) of the real service in trusted mode on 127.0.0.1 over a seeded DB."""
    db = central_db
    ids = seed(db, tmp_path)
    central = embedded_central(db_settings(db, tmp_path, host="127.0.0.1", port=0, trusted=True))
    central.start()
    yield central.url, ids, db
    central.stop()


def post(url: str, **kwargs) -> requests.Response:
    return requests.post(url, timeout=10, allow_redirects=False, **kwargs)


# -- the peer ----------------------------------------------------------------------------------------------
def scope(client, method="POST", path="/api/v1/task/submit", headers=()):
    return {
        "type": "http",
        "method": method,
        "path": path,
        "client": client,
        "server": ("127.0.0.1", 1),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    }


def test_guard_checks_each_peer_in_trusted_mode(tmp_path):  # one backend: the Guard alone, no DB
    trusted = Guard(None, CentralSettings(trusted=True, trusted_networks=["10.1.0.0/16"]), trusted=True)
    assert trusted.refusal(scope(("127.0.0.1", 5))) is None
    assert trusted.refusal(scope(("::1", 5))) is None
    assert trusted.refusal(scope(("::ffff:127.0.0.1", 5))) is None
    assert trusted.refusal(scope(("10.1.2.3", 5))) is None  # in trusted_networks
    for foreign in (("10.2.0.1", 5), ("192.168.1.9", 5), ("::ffff:10.2.0.1", 5), ("2001:db8::1", 5), ("testclient", 5)):
        status, message = trusted.refusal(scope(foreign))
        assert status == 403 and "trusted" in message, foreign
    # no peer address: only a unix socket has none
    assert trusted.refusal(scope(None))[0] == 403
    on_socket = Guard(None, CentralSettings(trusted=True, unix_socket=tmp_path / "s"), trusted=True)
    assert on_socket.refusal(scope(None)) is None
    # token mode: tokens decide, any peer may try
    assert Guard(None, CentralSettings(), trusted=False).refusal(scope(("192.168.1.9", 5))) is None


def test_foreign_peer_is_refused_before_any_work_by_the_served_stack(tmp_path, central_db):
    """The stack the server runs, with a foreign client address: 403 on every route, hot path included."""
    db = central_db
    ids = seed(db, tmp_path)
    before = snapshot(db)
    settings = db_settings(db, tmp_path, trusted=True)
    svc = CentralService.open(db, settings)
    try:
        asgi = central_asgi(settings, svc, None)
        with TestClient(asgi, client=("192.0.2.7", 40000), base_url="http://127.0.0.1") as foreign:
            update = {"job_id": ids["panda_id"], "job_status": "failed"}
            calls = [
                ("post", "/api/v1/pilot/update_job", {"json": update}),
                ("post", "/api/v1/pilot/acquire_jobs", {"json": {"site_name": "S"}}),
                ("post", "/api/v1/task/submit", {"json": TASK}),
                ("post", "/server/panda/getJob", {"data": {"siteName": "S"}}),
                ("get", "/monitor/", {}),
                ("get", "/api/v1/task/list", {}),
            ]
            for method, path, kwargs in calls:
                answer = getattr(foreign, method)(path, **kwargs)
                assert answer.status_code == 403 and "192.0.2.7" in answer.text, path
        with TestClient(asgi, client=("127.0.0.1", 40000), base_url="http://127.0.0.1") as local:
            assert local.get("/api/v1/task/list").status_code == 200
    finally:
        svc.close()
    assert snapshot(db) == before


# -- Origin, Host, Sec-Fetch-Site, content types ----------------------------------------------------------
def test_foreign_origin_is_refused_and_writes_nothing(live):
    url, ids, db = live
    before = snapshot(db)
    attacks = [
        ("/api/v1/task/submit", {"json": TASK, "headers": {"Origin": EVIL}}),
        (
            "/api/v1/pilot/update_job",
            {"json": {"job_id": ids["panda_id"], "job_status": "failed"}, "headers": {"Origin": EVIL}},
        ),  # the hot path
        (
            "/api/v1/pilot/acquire_jobs",
            {"data": '{"site_name": "S"}', "headers": {"Origin": EVIL, "Content-Type": "text/plain"}},
        ),
        ("/server/panda/getJob", {"data": {"siteName": "S"}, "headers": {"Origin": EVIL}}),
        (
            "/server/panda/updateJob",
            {"data": {"jobId": ids["panda_id"], "state": "failed"}, "headers": {"Origin": "null"}},
        ),  # sandboxed iframe, file://
        (
            "/server/panda/updateJob",
            {
                "data": {"jobId": ids["panda_id"], "state": "failed"},
                "headers": {"Origin": url.replace("127.0.0.1", "localhost")},
            },
        ),
        ("/server/panda/getJob", {"data": {"siteName": "S"}, "headers": {"Sec-Fetch-Site": "cross-site"}}),
        ("/server/panda/getJob", {"data": {"siteName": "S"}, "headers": {"Sec-Fetch-Site": "same-site"}}),
        (f"/monitor/errors/{ids['rule']}/promote", {"data": {"class": "system"}, "headers": {"Origin": EVIL}}),
    ]
    for path, kwargs in attacks:
        answer = post(url + path, **kwargs)
        assert answer.status_code == 403 and "cross-site" in answer.text, (path, answer.status_code, answer.text)
    assert snapshot(db) == before


def test_simple_content_types_are_refused_on_v1_when_a_browser_sends_them(live):
    url, _, db = live
    before = snapshot(db)
    same_origin = {"Origin": url}
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        answer = post(url + "/api/v1/task/submit", data='{"name": "t"}', headers={**same_origin, "Content-Type": ctype})
        assert answer.status_code == 415 and answer.json()["success"] is False, ctype
    assert snapshot(db) == before
    # the same call as JSON from the service's own origin works
    answer = post(url + "/api/v1/task/submit", json=TASK, headers=same_origin)
    assert answer.status_code == 200 and answer.json()["success"], answer.text


def test_bad_host_is_refused(live):
    url, ids, db = live
    before = snapshot(db)
    port = url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "attacker.test", f"rebind.127.0.0.1.nip.io:{port}"):
        assert post(url + "/api/v1/task/submit", json=TASK, headers={"Host": host}).status_code == 403, host
        assert post(url + "/server/panda/getJob", data={"siteName": "S"}, headers={"Host": host}).status_code == 403
        # trusted mode: a rebound page may not even read
        assert requests.get(url + "/monitor/", headers={"Host": host}, timeout=10).status_code == 403
    assert snapshot(db) == before
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert requests.get(url + "/api/v1/system/is_alive", headers={"Host": host}, timeout=10).status_code == 200


def test_clients_without_a_browser_keep_working(live):
    """No Origin (harvester, curl), or the Origin a PanDA pilot sends with its token (PANDA_AUTH_ORIGIN)."""
    url, ids, db = live
    answer = post(url + "/api/v1/task/submit", json=TASK)
    assert answer.status_code == 200 and answer.json()["success"]
    pilot = {"Origin": "atlas.pilot", "User-Agent": "pilot/3.10 (Python 3.11)"}
    answer = post(
        url + "/api/v1/pilot/update_job", json={"job_id": ids["panda_id"], "job_status": "running"}, headers=pilot
    )
    assert answer.status_code == 200 and answer.json()["success"], answer.text
    legacy = post(url + "/server/panda/getStatus", data={"ids": str(ids["panda_id"])}, headers=pilot)
    assert legacy.status_code == 200 and "status=running" in legacy.text
    # read-only GETs stay GETs: the pilot's get_job_status, legacy getStatus and isAlive
    assert (
        requests.get(url + "/api/v1/pilot/get_job_status", params={"job_ids": ids["panda_id"]}, timeout=10).json()[
            "data"
        ][0]["status"]
        == "running"
    )
    assert requests.get(url + "/server/panda/getStatus", params={"ids": ids["panda_id"]}, timeout=10).status_code == 200
    assert requests.get(url + "/server/panda/isAlive", timeout=10).text == "alive=yes"


# -- GET changes nothing -----------------------------------------------------------------------------------
def test_get_on_state_changing_routes_changes_nothing(live):
    url, ids, db = live
    before = snapshot(db)
    pid = ids["panda_id"]
    links = [  # what an <img src>, a link or a prefetch could request
        ("/server/panda/getJob", {"siteName": "S"}),
        ("/server/panda/updateJob", {"jobId": pid, "state": "failed"}),
        ("/server/panda/updateJobsInBulk", {"jobList": f'[{{"jobId": {pid}, "state": "failed"}}]'}),
        ("/server/panda/getEventRanges", {"pandaID": pid, "nRanges": 5}),
        ("/server/panda/updateEventRanges", {"eventRanges": "[]"}),
        ("/server/panda/updateWorkerPilotStatus", {"harvesterID": "h1", "workerID": "1", "status": "finished"}),
        ("/api/v1/pilot/acquire_jobs", {"site_name": "S"}),
        ("/api/v1/pilot/update_job", {"job_id": pid, "job_status": "failed"}),
        ("/api/v1/event/acquire_event_ranges", {"job_id": pid, "n_ranges": 5}),
        ("/api/v1/task/submit", {}),
        ("/api/v1/task/kill", {"task_id": ids["task_id"]}),
        (f"/monitor/errors/{ids['rule']}/promote", {"class": "system"}),
    ]
    for path, params in links:
        for method in (requests.get, requests.head):
            answer = method(url + path, params=params, timeout=10)
            assert answer.status_code == 405, (path, method, answer.status_code, answer.text)
    assert snapshot(db) == before


# -- monitor forms -----------------------------------------------------------------------------------------
def form_token(html: str) -> str:
    found = re.search(r'<input type="hidden" name="csrf" value="([0-9a-f]{64})">', html)
    assert found, "the errors page's form has no CSRF field"
    return found.group(1)


def rule_state(db: Path | str, rule: int) -> tuple:
    return db_rows(db, "SELECT status, class FROM error_classes WHERE id=?", (rule,))[0]


def test_monitor_form_needs_the_right_csrf_token(live):
    url, ids, db = live
    promote = f"{url}/monitor/errors/{ids['rule']}/promote"
    browser = requests.Session()
    page = browser.get(url + "/monitor/errors", timeout=10)
    assert page.status_code == 200 and "he_csrf" in browser.cookies
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/monitor" in cookie
    token = form_token(page.text)
    other = requests.Session()  # another browser (or an attacker who planted its own cookie)
    other_token = form_token(other.get(url + "/monitor/errors", timeout=10).text)
    refused = [
        (requests, {"class": "system"}),  # no cookie, no token
        (browser, {"class": "system"}),  # cookie, no token
        (browser, {"class": "system", "csrf": "0" * 64}),  # wrong token
        (browser, {"class": "system", "csrf": other_token}),  # a token for another cookie
        (requests, {"class": "system", "csrf": token}),  # the token without its cookie
    ]
    for client, form in refused:
        answer = client.post(promote, data=form, timeout=10, allow_redirects=False)
        assert answer.status_code == 403 and "CSRF" in answer.text, form
        assert rule_state(db, ids["rule"])[0] == "suggested"
    # the right token but sent from another site: the Guard refuses it before the form is read
    assert (
        browser.post(
            promote,
            data={"class": "system", "csrf": token},
            headers={"Origin": EVIL},
            timeout=10,
            allow_redirects=False,
        ).status_code
        == 403
    )
    assert rule_state(db, ids["rule"])[0] == "suggested"
    # the page's own form, as a browser submits it (same origin)
    answer = browser.post(
        promote, data={"class": "system", "csrf": token}, headers={"Origin": url}, timeout=10, allow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith("/monitor/errors")
    assert rule_state(db, ids["rule"]) == ("confirmed", "system")


# -- the unix socket ---------------------------------------------------------------------------------------
def test_unix_socket_trusted_mode_with_file_permissions(tmp_path, central_db):
    db = central_db
    seed(db, tmp_path)
    sock = tmp_path / "central.sock"
    group = grp.getgrgid(os.getgid()).gr_name
    central = embedded_central(
        db_settings(db, tmp_path, unix_socket=sock, trusted=True, unix_socket_mode=0o660, unix_socket_group=group)
    )
    central.start()
    try:
        info = sock.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == os.getgid()
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost", timeout=10
        ) as client:
            assert client.get("/api/v1/system/is_alive").json()["success"] is True  # no peer address: accepted
            answer = client.post("/api/v1/task/submit", json=TASK)
            assert answer.status_code == 200 and answer.json()["success"], answer.text
            before = snapshot(db)
            assert client.post("/api/v1/task/submit", json=TASK, headers={"Origin": EVIL}).status_code == 403
            assert client.get("/server/panda/getJob", params={"siteName": "S"}).status_code == 405
            assert snapshot(db) == before
    finally:
        central.stop()


def test_unix_socket_defaults_to_owner_only(tmp_path, central_db):
    sock = tmp_path / "c.sock"
    central = embedded_central(db_settings(central_db, tmp_path, unix_socket=sock, trusted=True))
    central.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    finally:
        central.stop()


# -- a real browser: a hostile page on another origin, and the monitor's own form ---------------------------
ATTACK_PAGE = """<!doctype html><html><body>
<iframe name="f1"></iframe><iframe name="f2"></iframe><iframe name="f3"></iframe><iframe name="f4"></iframe>
<form id="legacy" method="post" action="{svc}/server/panda/updateJob" target="f1">
  <input name="jobId" value="{pid}"><input name="state" value="failed"></form>
<form id="dispatch" method="post" action="{svc}/server/panda/getJob" target="f2">
  <input name="siteName" value="S"></form>
<form id="promote" method="post" action="{svc}/monitor/errors/{rule}/promote" target="f3">
  <input name="class" value="system"></form>
<form id="plain" method="post" action="{svc}/api/v1/task/submit" enctype="text/plain" target="f4">
  <input name='{{"name": "t", "x": "' value='"}}'></form>
<img src="{svc}/server/panda/getJob?siteName=S">
<img src="{svc}/server/panda/updateJob?jobId={pid}&state=failed">
<script>
for (const id of ["legacy", "dispatch", "promote", "plain"]) document.getElementById(id).submit();
fetch("{svc}/api/v1/task/submit", {{method: "POST", mode: "no-cors", body: JSON.stringify({task})}});
</script></body></html>"""


class Refusals(logging.Handler):
    """Counts the Guard's refusal lines: proof that the browser's requests reached the service."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_hostile_page_in_chromium_changes_nothing_and_the_monitor_form_works(live, browser, tmp_path):
    chromium = browser  # tests/web's Chromium: headless, loopback only
    from selenium.webdriver.common.by import By

    url, ids, db = live
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text(
        ATTACK_PAGE.format(svc=url, pid=ids["panda_id"], rule=ids["rule"], task=json.dumps(TASK))
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    evil.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=evil.serve_forever, name="evil-site", daemon=True).start()
    refusals = Refusals()
    guard_log = logging.getLogger("harvester_edge.central.guard")
    guard_log.addHandler(refusals)
    old_level = guard_log.level
    guard_log.setLevel(logging.INFO)
    before = snapshot(db)
    try:
        # "localhost" is another site than 127.0.0.1 (and another port): a page the operator happens to open
        chromium.get(f"http://localhost:{evil.server_address[1]}/index.html")
        wait_for(
            lambda: len(refusals.lines) >= 7 or snapshot(db) != before,
            20,
            "the hostile page's 7 requests to reach the service",
        )
        assert snapshot(db) == before, refusals.lines
        assert sum("cross-site" in line for line in refusals.lines) >= 5
        assert sum("send it with POST" in line for line in refusals.lines) == 2  # the two <img> GETs

        # the monitor's own form, in the same browser, without JavaScript doing anything
        chromium.get(f"{url}/monitor/errors")
        form = chromium.find_element(By.CSS_SELECTOR, f'form[action="/monitor/errors/{ids["rule"]}/promote"]')
        form.find_element(By.CSS_SELECTOR, "select option[value=system]").click()
        form.find_element(By.TAG_NAME, "button").click()
        wait_for(lambda: rule_state(db, ids["rule"]) == ("confirmed", "system"), 20, "the promoted rule")
        assert "/monitor/errors?done=" in chromium.current_url
    finally:
        guard_log.removeHandler(refusals)
        guard_log.setLevel(old_level)
        evil.shutdown()
        evil.server_close()
