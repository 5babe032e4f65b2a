"""Brokerage by resources, scouts and WORK_SHORTAGE on the service layer, over both backends (SQLite, PostgreSQL)."""

from __future__ import annotations

import pytest

from harvester_edge.central.brokerage import Resources
from harvester_edge.central.errors import InvalidInput

from .conftest import task_dict

NORMAL = Resources.of("normal", 2000, 0, 1)
HIGHMEM = Resources.of("highmem", 8000, 2500, 1)


def report(service, ranges, wall: float = 2.0, pss_kb: int = 0):
    return service.update_event_ranges(
        [
            {"eventRangeID": r["eventRangeID"], "eventStatus": "finished", "wallTime": wall, "maxPSS": pss_kb}
            for r in ranges
        ]
    )


def test_only_jobs_that_fit_the_queue_are_handed_out(service):
    big = service.submit_task(task_dict(name="big", memory_per_rank_mb=3000))
    small = service.submit_task(task_dict(name="small", memory_per_rank_mb=1000, cores=2))
    assert service.acquire_jobs("S", 5, resources=Resources.of("tiny", 500)) == []
    # 2 cores per rank needed: a 1-core queue gets neither (big does not fit its memory)
    assert service.acquire_jobs("S", 5, resources=NORMAL) == []
    got = service.acquire_jobs("S", 5, resources=Resources.of("normal2", 2000, 0, 2))
    assert [j["taskID"] for j in got] == [small]
    # the high-memory queue leaves small tasks alone and takes the big one
    got = service.acquire_jobs("S", 5, resources=HIGHMEM)
    assert [j["taskID"] for j in got] == [big] and got[0]["minRamCount"] == 3000
    job = service.show_task(big)["jobs"][0]
    assert job["status"] == "sent"
    # a request that says nothing about resources gets any job (as before brokerage)
    service.submit_task(task_dict(name="any", memory_per_rank_mb=50_000))
    assert len(service.acquire_jobs("S", 5)) == 1


def test_bad_resource_numbers_are_refused():
    with pytest.raises(InvalidInput, match="memory"):
        Resources.of("q", "lots")
    with pytest.raises(InvalidInput, match="memory_min"):
        Resources.of("q", 10, -1)


def test_scouts_measure_and_move_the_rest_to_a_queue_that_fits(service):
    task_id = service.submit_task(
        task_dict(events=20, events_per_range=1, memory_per_rank_mb=500, scouts=4, max_attempts=3)
    )
    shown = service.show_task(task_id)
    assert shown["estimates"]["memory_from"] == "declared" and shown["estimates"]["scouts"] == 4
    assert service.acquire_jobs("S", 1, resources=HIGHMEM) == []  # 500 MB: below the high-memory minimum
    (job,) = service.acquire_jobs("S", 1, resources=NORMAL)
    first = service.acquire_event_ranges(job["PandaID"], task_id, 2)
    assert [r["startEvent"] for r in first] == [1, 2]
    report(service, first, wall=3.0, pss_kb=3000 * 1024)  # the scouts needed 3000 MB per rank
    est = service.show_task(task_id)["estimates"]
    assert est["scouts_done"] == 2 and est["memory_per_rank_mb"] == 3000 and est["memory_from"] == "scouts"
    assert est["seconds_per_event"] == pytest.approx(3.0) and est["seconds_per_event_from"] == "scouts"
    # the normal queue's job gets no more ranges, and its queue no more jobs of the task
    assert service.acquire_event_ranges(job["PandaID"], task_id, 5) == []
    service.update_job(job["PandaID"], "finished", {})
    shown = service.show_task(task_id)
    assert shown["job_failures"] == 0 and [j["status"] for j in shown["jobs"]] == ["finished", "activated"]
    assert service.acquire_jobs("S", 1, resources=NORMAL) == []
    (big,) = service.acquire_jobs("S", 1, resources=HIGHMEM)
    assert big["minRamCount"] == 3000 and big["secondsPerEvent"] == pytest.approx(3.0)
    rest = service.acquire_event_ranges(big["PandaID"], task_id, 100)
    assert len(rest) == 18
    report(service, rest[:2], wall=1.0, pss_kb=3500 * 1024)  # scouts 3 and 4: on the high-memory queue
    report(service, rest[2:], wall=100.0, pss_kb=9_000_000)  # no scouts: they change nothing
    est = service.show_task(task_id)["estimates"]
    assert est["scouts_done"] == 4 and est["memory_per_rank_mb"] == 3500
    assert est["seconds_per_event"] == pytest.approx(8.0 / 4)
    assert service.show_task(task_id)["status"] == "finished"


def test_a_job_left_without_ranges_by_brokerage_is_no_failure(service):
    task_id = service.submit_task(task_dict(events=10, events_per_range=1, memory_per_rank_mb=500, jobs=2))
    a, b = service.acquire_jobs("S", 2, resources=NORMAL)
    report(service, service.acquire_event_ranges(a["PandaID"], task_id, 1), pss_kb=4000 * 1024)
    assert service.acquire_event_ranges(b["PandaID"], task_id, 5) == []  # b never ran a range: it does not fit
    service.update_job(b["PandaID"], "finished", {})
    assert service.show_task(task_id)["job_failures"] == 0


def test_wait_for_scouts_holds_the_other_ranges_back(service):
    task_id = service.submit_task(task_dict(events=10, events_per_range=1, scouts=3, wait_for_scouts=True, jobs=2))
    a, b = service.acquire_jobs("S", 2)
    got = service.acquire_event_ranges(a["PandaID"], task_id, 10)
    assert [r["startEvent"] for r in got] == [1, 2, 3]
    assert service.acquire_event_ranges(b["PandaID"], task_id, 10) == []
    assert service.show_task(task_id)["estimates"]["scouting"] is True
    report(service, got)
    after = service.acquire_event_ranges(b["PandaID"], task_id, 10)
    assert [r["startEvent"] for r in after] == list(range(4, 11))
    assert service.show_task(task_id)["estimates"]["scouting"] is False


def test_work_shortage_modes(service):
    assert service.work_shortage() == {
        "shortage": True,
        "mode": "auto",
        "reason": "no ready range and no activated job of an active task",
    }
    task_id = service.submit_task(task_dict(events=10))
    assert service.work_shortage()["shortage"] is False
    assert service.set_work_shortage("on")["shortage"] is True
    assert service.work_shortage()["mode"] == "on"
    service.kill_task(task_id)
    assert service.set_work_shortage("off") == {
        "shortage": False,
        "mode": "off",
        "reason": "switched off by the operator",
    }
    assert service.set_work_shortage("auto")["shortage"] is True
    with pytest.raises(InvalidInput, match="on, off, auto"):
        service.set_work_shortage("maybe")


def test_brokerage_and_shortage_over_http(trusted_central):
    """The harvester's client: acquire_jobs with a queue's resources (v1), legacy getJob's mem/coreCount, the
    work-shortage routes; the scouts' measures travel with the range reports."""
    import requests

    from harvester_edge.central.client import CentralClient
    from harvester_edge.seams.http import HttpTransport

    transport = HttpTransport(trusted_central.url, timeout=10)
    client = CentralClient(transport, harvester_id="h1")
    try:
        task_id = client.submit_task(task_dict(events=4, events_per_range=1, memory_per_rank_mb=600, scouts=1))
        assert client.acquire_jobs("S", "small", harvester_id="h1", memory=500, memory_min=0, core_count=1) == []
        legacy = trusted_central.url + "/server/panda/getJob"
        answer = requests.post(legacy, data={"siteName": "S", "mem": "500", "coreCount": "1"}, timeout=10)
        assert "StatusCode=20" in answer.text  # nothing fits 500 MB per rank
        (job,) = client.acquire_jobs("S", "big", harvester_id="h1", memory=1000, memory_min=0, core_count=1)
        ranges = client.acquire_event_ranges(job["PandaID"], task_id, task_id, 1)
        reports = [{**range_report(r), "wallTime": 4.0, "maxPSS": 900 * 1024} for r in ranges]
        assert client.update_event_ranges(reports)["Results"] == ["applied"]
        est = trusted_central.service.show_task(task_id)["estimates"]
        assert est["memory_per_rank_mb"] == 900 and est["seconds_per_event"] == 4.0
        assert client.work_shortage()["shortage"] is False
        url = trusted_central.url + "/api/v1/task/set_work_shortage"
        assert requests.post(url, json={"mode": "on"}, timeout=10).json()["data"]["shortage"] is True
        assert client.work_shortage() == {"shortage": True, "mode": "on", "reason": "declared by the operator"}
        bad = requests.post(url, json={"mode": "sometimes"}, timeout=10)
        assert bad.json()["success"] is False and client.work_shortage()["mode"] == "on"  # the v1 envelope
    finally:
        transport.close()


def range_report(r: dict) -> dict:
    return {"eventRangeID": r["eventRangeID"], "eventStatus": "finished"}
