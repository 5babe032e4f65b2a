"""Error rules (issue 17 item 1): class 'fatal' is never retried, 'system' does not use up attempts (through a real
server and its client, both backends); rules suggested from a job, added, edited, deleted, each change recorded
with who and when; suggestions ranked by hits; the same over /api/v1 with a token's subject."""

from __future__ import annotations

import re

import pytest
import requests

from harvester_edge.central.client import CentralClient
from harvester_edge.central.errors import InvalidInput, NotFound
from harvester_edge.central.states import RangeStatus
from harvester_edge.seams.http import HttpTransport

from .conftest import task_dict


@pytest.fixture
def client(trusted_central):
    transport = HttpTransport(trusted_central.url, timeout=10)
    yield CentralClient(transport, harvester_id="h1")
    transport.close()


def report(client: CentralClient, r: dict, code: int, diag: str) -> None:
    answer = client.update_event_ranges(
        [{"eventRangeID": r["eventRangeID"], "eventStatus": "failed", "errorCode": code, "errorDiag": diag}]
    )
    assert answer["Results"] == ["applied"]


def range_rows(service, task_id: int) -> dict[int, tuple]:
    rows = service.db.query("SELECT start_event, status, failures, attempt_nr FROM ranges WHERE task_id=?", (task_id,))
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_fatal_is_never_retried_and_system_does_not_use_up_attempts(client, trusted_central):
    service = trusted_central.service
    service.add_error_rule("event", 42, "corrupt input", "fatal", who="test")
    service.add_error_rule("event", 43, "", "system", who="test")
    task_id = client.submit_task(task_dict(events=30, events_per_range=10, max_attempts=2))
    job = client.acquire_jobs("SITE", n_jobs=1, harvester_id="h1")[0]
    pid = job["PandaID"]
    first = client.acquire_event_ranges(pid, task_id, task_id, 3)
    assert [r["startEvent"] for r in first] == [1, 11, 21]
    report(client, first[0], 42, "corrupt input file evts.root")  # fatal: ends at once
    report(client, first[1], 43, "node lost its scratch disk")  # system: back to ready, no attempt used
    report(client, first[2], 44, "segfault")  # unclassified: back to ready, one attempt used
    assert range_rows(service, task_id) == {
        1: (int(RangeStatus.FATAL), 1, 1),
        11: (int(RangeStatus.READY), 0, 1),
        21: (int(RangeStatus.READY), 1, 1),
    }
    for _ in range(3):  # the system failure again and again: still no attempt used, still handed out
        again = client.acquire_event_ranges(pid, task_id, task_id, 1)
        assert [r["startEvent"] for r in again] == [11]
        report(client, again[0], 43, "node lost its scratch disk")
    rest = client.acquire_event_ranges(pid, task_id, task_id, 5)
    assert sorted(r["startEvent"] for r in rest) == [11, 21]  # never the fatal range again
    client.update_event_ranges([{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in rest])
    rows = range_rows(service, task_id)
    assert rows[1] == (int(RangeStatus.FATAL), 1, 1)  # dispatched once, in all
    assert rows[11] == (int(RangeStatus.FINISHED), 0, 5)  # four system failures used no attempt of 2
    shown = service.show_task(task_id)
    assert shown["status"] == "failed" and shown["ranges"] == {"fatal": 1, "finished": 2}
    hits = {(e["code"], e["class"]): e["hits"] for e in service.list_errors() if e["source"] == "event"}
    assert hits[(42, "fatal")] == 1 and hits[(43, "system")] == 4


def test_a_job_failure_classed_fatal_ends_its_ranges_without_retry(client, trusted_central):
    service = trusted_central.service
    service.add_error_rule("pilot", 1305, r"payload version [0-9.]+ unsupported", "fatal", who="test")
    task_id = client.submit_task(task_dict(events=40, events_per_range=10, max_attempts=3))
    pid = client.acquire_jobs("SITE", n_jobs=1, harvester_id="h1")[0]["PandaID"]
    held = client.acquire_event_ranges(pid, task_id, task_id, 2)
    client.update_job(pid, "failed", pilot_error_code=1305, pilot_error_diag="payload version 2.1 unsupported")
    rows = range_rows(service, task_id)
    assert [rows[r["startEvent"]][0] for r in held] == [int(RangeStatus.FATAL)] * 2
    assert rows[21][0] == rows[31][0] == int(RangeStatus.READY)  # the rest goes on with a new job
    # the same code with another message is not fatal: the job's ranges come back
    pid2 = client.acquire_jobs("SITE", n_jobs=1, harvester_id="h1")[0]["PandaID"]
    held2 = client.acquire_event_ranges(pid2, task_id, task_id, 1)
    client.update_job(pid2, "failed", pilot_error_code=1305, pilot_error_diag="lost connection")
    assert range_rows(service, task_id)[held2[0]["startEvent"]][0] == int(RangeStatus.READY)


def test_suggest_from_a_job_add_edit_delete_and_history(service):
    task_id = service.submit_task(task_dict(events=20, jobs=2, max_attempts=3))
    jobs = service.acquire_jobs("SITE", n_jobs=2)
    for job, size in zip(jobs, (1234, 99), strict=True):
        service.update_job(
            job["PandaID"],
            "failed",
            {"pilotErrorCode": 1212, "pilotErrorDiag": f"stage-in of file{size}.root failed after {size}s"},
        )
    rule = service.suggest_error_rule(jobs[0]["PandaID"])
    assert (rule["source"], rule["code"], rule["class"]) == ("pilot", 1212, "payload")
    assert re.search(rule["diag_pattern"], "stage-in of file77.root failed after 5s")  # numbers generalized
    assert not re.search(rule["diag_pattern"], "stage-out of file77.root failed after 5s")
    assert [(e["source"], e["code"], e["status"], e["hits"]) for e in rule["existing"]] == [
        ("pilot", 1212, "suggested", 2)
    ]
    with pytest.raises(NotFound):
        service.suggest_error_rule(999999)

    rule_id = service.add_error_rule("pilot", 1212, rule["diag_pattern"], "system", who="alice")
    row = service.edit_error_rule(rule_id, {"class": "fatal"}, who="bob")
    assert (row["class"], row["diag_pattern"], row["status"]) == ("fatal", rule["diag_pattern"], "confirmed")
    with pytest.raises(InvalidInput):
        service.edit_error_rule(rule_id, {"class": "nonsense"}, who="bob")
    with pytest.raises(InvalidInput):
        service.edit_error_rule(rule_id, {"diag_pattern": "("}, who="bob")
    deleted = service.delete_error_rule(rule_id, who="carol")
    assert deleted["id"] == rule_id and rule_id not in {r["id"] for r in service.list_errors()}
    with pytest.raises(NotFound):
        service.delete_error_rule(rule_id, who="carol")
    history = service.error_history(rule_id)
    assert [(h["action"], h["who"]) for h in history] == [("delete", "carol"), ("edit", "bob"), ("add", "alice")]
    assert all(h["at"] == service.clock() for h in history)
    assert '"class": "system"' in history[1]["before"] and '"class": "fatal"' in history[1]["after"]
    assert history[0]["after"] is None and service.show_task(task_id)["status"] == "running"


def test_suggested_rules_are_ranked_by_hits(service):
    task_id = service.submit_task(task_dict(events=100, max_attempts=10))
    pid = service.acquire_jobs("SITE")[0]["PandaID"]
    for code, times in ((7, 1), (8, 3), (9, 2)):
        for _ in range(times):
            r = service.acquire_event_ranges(pid, task_id, 1)[0]
            service.update_event_ranges(
                [{"eventRangeID": r["eventRangeID"], "eventStatus": "failed", "errorCode": code, "errorDiag": "x"}]
            )
    assert [(e["code"], e["hits"]) for e in service.list_errors("suggested")] == [(8, 3), (9, 2), (7, 1)]


def test_rules_over_api_v1_record_the_token_subject(token_central):
    authority, url = token_central.authority, token_central.url + "/api/v1"
    admin = {"Authorization": f"Bearer {authority.issue('ops-alice', ['admin'])}"}
    harvester = {"Authorization": f"Bearer {authority.issue('h1', ['harvester'])}"}
    add = {"source": "exe", "code": 65, "diag_pattern": "killed", "class": "fatal"}
    refused = requests.post(f"{url}/errors/add", json=add, headers=harvester, timeout=10)
    assert refused.status_code == 403
    answer = requests.post(f"{url}/errors/add", json=add, headers=admin, timeout=10).json()
    assert answer["success"], answer
    rule_id = answer["data"]["id"]
    edited = requests.post(f"{url}/errors/edit", json={"id": rule_id, "class": "user"}, headers=admin, timeout=10)
    assert edited.json()["data"]["class"] == "user"
    bad = requests.post(f"{url}/errors/edit", json={"id": rule_id, "class": "nope"}, headers=admin, timeout=10)
    assert bad.json()["success"] is False and "not one of" in bad.json()["message"]
    listed = requests.get(f"{url}/errors/list", headers=admin, timeout=10).json()["data"]
    assert any(r["id"] == rule_id and r["class"] == "user" for r in listed)
    requests.post(f"{url}/errors/delete", json={"id": rule_id}, headers=admin, timeout=10).raise_for_status()
    history = requests.get(f"{url}/errors/history", params={"rule_id": rule_id}, headers=admin, timeout=10).json()
    assert [(h["action"], h["who"]) for h in history["data"]] == [
        ("delete", "ops-alice"),
        ("edit", "ops-alice"),
        ("add", "ops-alice"),
    ]
