"""Task kinds (jumbo / ordinary / eventservice), the job dicts a PanDA pilot receives, and how jobs end."""

from __future__ import annotations

import pytest

from harvester_edge.central.taskspec import parse_task
from harvester_edge.errors import ConfigError

from .conftest import task_dict

TRF = "http://127.0.0.1:8000/trf.sh"


def ordinary(**over) -> dict:
    base = {
        "name": "plain",
        "transformation": TRF,
        "job_parameters": "--events 5 --out x.txt",
        "cores": 4,
        "memory_mb": 3000,
        "walltime": 600,
        "prod_source_label": "managed",
        "jobs": 2,
        "max_attempts": 2,
        "output_files": [{"lfn": "x.txt"}],
    }
    base.update(over)
    return base


def test_ordinary_task_gives_plain_panda_jobs(service):
    task_id = service.submit_task(ordinary())
    jobs = service.acquire_jobs("SITE", 5)
    assert len(jobs) == 2
    job = jobs[0]
    assert job["transformation"] == TRF and job["jobPars"] == "--events 5 --out x.txt"
    assert (job["coreCount"], job["minRamCount"], job["maxWalltime"], job["prodSourceLabel"]) == (
        4,
        3000,
        600,
        "managed",
    )
    assert "eventService" not in job and "payload" not in job and job["resource_type"] == "MCORE"
    # the log file is an output the pilot stages out (outFiles lists it, one dataset/scope per output)
    assert job["outFiles"] == f"x.txt,{job['logFile']}" and job["scopeOut"] == "edge"
    assert len(job["realDatasets"].split(",")) == 2 and job["logGUID"] and job["scopeLog"] == "edge"
    assert job["taskID"] == task_id and job["jediTaskID"] == task_id and job["attemptNr"] == 1


def test_jumbo_jobs_keep_event_service_flags(service):
    service.submit_task(task_dict())
    job = service.acquire_jobs("SITE")[0]
    assert (job["eventService"], job["eventServiceType"], job["transformation"]) == ("True", 4, "jumbo")


def test_eventservice_kind_is_flagged_one(service):
    service.submit_task(ordinary(kind="eventservice", events=20, events_per_range=5, jobs=1, output_files=[]))
    job = service.acquire_jobs("SITE")[0]
    assert (job["eventService"], job["eventServiceType"], job["transformation"]) == ("True", 1, TRF)
    assert len(service.acquire_event_ranges(job["PandaID"], None, 10)) == 4


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"transformation": "ftp://x/y"}, "transformation"),
        ({"transformation": None}, "payload"),
        ({"events": 10}, "ordinary task has no event ranges"),
        ({"kind": "jumbo"}, "a jumbo task needs payload"),
    ],
)
def test_bad_kinds_are_clear_errors(bad, words):
    with pytest.raises(ConfigError, match=words):
        parse_task(ordinary(**bad))


def test_ordinary_jobs_finishing_finish_the_task(service):
    task_id = service.submit_task(ordinary())
    jobs = service.acquire_jobs("SITE", 5)
    assert service.acquire_jobs("SITE", 5) == []  # no job is regenerated while both run
    for j in jobs:
        for state in ("starting", "running", "finished"):
            service.update_job(j["PandaID"], state, {"startTime": 1_000_000.5, "pilotID": "p|PR|3.7"})
    shown = service.show_task(task_id)
    assert shown["status"] == "finished" and shown["ranges"] == {"finished": 2}
    assert [j["status"] for j in shown["jobs"]] == ["finished", "finished"]


def test_failed_ordinary_job_is_retried_within_attempts(service):
    task_id = service.submit_task(ordinary(jobs=1))
    for attempt in (1, 2):
        job = service.acquire_jobs("SITE")[0]
        assert job["attemptNr"] == attempt
        service.update_job(job["PandaID"], "failed", {"pilotErrorCode": 1305, "pilotErrorDiag": "payload failed"})
    assert service.acquire_jobs("SITE") == []
    shown = service.show_task(task_id)
    assert shown["status"] == "failed" and shown["ranges"] == {"failed": 1}


def test_es_job_without_ranges_returns_them_and_regeneration_is_bounded(service):
    task_id = service.submit_task(task_dict(jobs=1, max_attempts=2))
    first = service.acquire_jobs("SITE")[0]
    held = service.acquire_event_ranges(first["PandaID"], task_id, 3)
    assert len(held) == 3
    service.update_job(first["PandaID"], "finished")  # reported none of its ranges
    assert service.show_task(task_id)["ranges"] == {"ready": 10}  # returned, not failed
    second = service.acquire_jobs("SITE")[0]
    assert second["attemptNr"] == 2
    service.update_job(second["PandaID"], "finished")  # again nothing done
    assert service.acquire_jobs("SITE") == []  # bounded: max_attempts 2 x 1 job
    shown = service.show_task(task_id)
    assert shown["status"] == "failed"
    assert "without finishing an event range" in shown["diag"] and "max_attempts 2" in shown["diag"]
    assert shown["ranges"] == {"ready": 10}


def test_productive_jumbo_jobs_are_replaced(service):
    task_id = service.submit_task(task_dict(jobs=1, max_attempts=1, events=30))
    for _ in range(3):  # each job finishes one range, then ends: progress, so a new job follows every time
        job = service.acquire_jobs("SITE")[0]
        rng = service.acquire_event_ranges(job["PandaID"], task_id, 1)
        service.update_event_ranges([{"eventRangeID": rng[0]["eventRangeID"], "eventStatus": "finished"}])
        service.update_job(job["PandaID"], "finished")
    assert service.show_task(task_id)["status"] == "finished"


def test_pilot_fields_are_recorded(service, clock):
    service.submit_task(ordinary(jobs=1))
    pid = service.acquire_jobs("SITE")[0]["PandaID"]
    service.update_job(pid, "starting", {"startTime": "2026-11-28 10:00:00"})
    clock.now += 5
    service.update_job(
        pid,
        "running",
        {
            "pilotID": "https://x/1|PR|3.7.0",
            "cpuConsumptionTime": "12.5",
            "cpuConsumptionUnit": "s+Intel",
            "maxRSS": "2048",
        },
    )
    clock.now += 5
    service.update_job(
        pid,
        "failed",
        {"pilotErrorCode": 1305, "pilotTiming": "1|2|3|4|5|6", "pilotLog": "line\n" * 500, "endTime": 1_000_010.0},
    )
    row = service.db.query("SELECT * FROM jobs WHERE panda_id=?", (pid,))[0]
    assert row["start_time"] == 1795860000.0 and row["end_time"] == 1_000_010.0
    assert row["pilot_id"].startswith("https://x/1") and row["pilot_timing"] == "1|2|3|4|5|6"
    assert (row["cpu_time"], row["cpu_unit"], row["max_rss"]) == (12.5, "s+Intel", 2048)
    assert row["pilot_log"].endswith("line\n") and len(row["pilot_log"]) <= 4096
    import json

    states = [s for s, _ in json.loads(row["state_history"])]
    assert states == ["sent", "starting", "running", "failed"]
