"""The service layer on a real SQLite file: tasks, jobs, ranges, retries, classification, watchdog."""

from __future__ import annotations

import threading
import time

import pytest

from harvester_edge.central.errors import IllegalStateChange, InvalidInput, NotFound
from harvester_edge.central.service import CentralService
from harvester_edge.central.taskspec import load_task_file, parse_task
from harvester_edge.errors import ConfigError

from .conftest import db_rows, db_settings, task_dict


def finish(service, ranges):
    return service.update_event_ranges([{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in ranges])


def test_submit_splits_into_ranges_and_jumbo_jobs(service):
    task_id = service.submit_task(task_dict(events=95, jobs=2))
    shown = service.show_task(task_id)
    assert shown["status"] == "defined"
    assert shown["ranges"] == {"ready": 10}
    assert [j["status"] for j in shown["jobs"]] == ["activated", "activated"]
    jobs = service.acquire_jobs("SITE", 5)
    assert len(jobs) == 2 and all(j["eventService"] == "True" and j["eventServiceType"] == 4 for j in jobs)
    assert jobs[0]["payload"]["callable"] == "jumbo.payloads:simulate"
    assert service.show_task(task_id)["status"] == "running"
    # jumbo: both jobs take ranges task-wide; the last range is short
    a = service.acquire_event_ranges(jobs[0]["PandaID"], task_id, 6)
    b = service.acquire_event_ranges(jobs[1]["PandaID"], task_id, 6)
    assert len(a) == 6 and len(b) == 4 and b[-1]["lastEvent"] == 95
    assert not {r["eventRangeID"] for r in a} & {r["eventRangeID"] for r in b}


def test_all_ranges_finished_finishes_the_task(service):
    task_id = service.submit_task(task_dict(events=30))
    job = service.acquire_jobs("SITE")[0]
    out = finish(service, service.acquire_event_ranges(job["PandaID"], task_id, 10))
    assert out["Results"] == ["applied"] * 3
    shown = service.show_task(task_id)
    assert shown["status"] == "finished" and shown["events_finished"] == 30
    assert service.update_job(job["PandaID"], "finished") == "NULL"


def test_duplicate_and_stale_reports_are_no_ops(service, clock):
    task_id = service.submit_task(task_dict(events=20, max_attempts=5))
    job = service.acquire_jobs("SITE")[0]
    first = service.acquire_event_ranges(job["PandaID"], task_id, 1)[0]
    # the range fails and comes back with a new attempt number
    service.update_event_ranges([{"eventRangeID": first["eventRangeID"], "eventStatus": "failed", "errorCode": 1}])
    again = service.acquire_event_ranges(job["PandaID"], task_id, 1)[0]
    assert again["eventRangeID"].rsplit("-", 1)[0] == first["eventRangeID"].rsplit("-", 1)[0]
    assert again["eventRangeID"].endswith("-2")
    # a late report of the old attempt neither finishes nor fails the current attempt
    late = finish(service, [first])
    assert late["Results"] == ["stale"] and late["Returns"] == [False]
    assert service.show_task(task_id)["ranges"] == {"ready": 1, "sent": 1}
    assert finish(service, [again])["Results"] == ["applied"]
    assert finish(service, [again, again])["Results"] == ["duplicate", "duplicate"]
    assert service.show_task(task_id)["events_finished"] == 10


def test_unknown_or_malformed_range_rejects_whole_report(service):
    task_id = service.submit_task(task_dict(events=20))
    job = service.acquire_jobs("SITE")[0]
    good = service.acquire_event_ranges(job["PandaID"], task_id, 1)[0]
    for bad in ("1-2-3", f"{task_id}-{job['PandaID']}-1-999-1", None, "a-b-c-d-e"):
        with pytest.raises((InvalidInput, NotFound)):
            service.update_event_ranges(
                [
                    {"eventRangeID": good["eventRangeID"], "eventStatus": "finished"},
                    {"eventRangeID": bad, "eventStatus": "finished"},
                ]
            )
    with pytest.raises(InvalidInput):
        service.update_event_ranges([{"eventRangeID": good["eventRangeID"], "eventStatus": "weird"}])
    assert service.show_task(task_id)["ranges"] == {"ready": 1, "sent": 1}  # nothing written


def test_failed_ranges_retry_up_to_max_attempts_then_task_fails_and_retry_reopens(service):
    task_id = service.submit_task(task_dict(events=10, max_attempts=2))
    job = service.acquire_jobs("SITE")[0]
    for _ in range(2):
        r = service.acquire_event_ranges(job["PandaID"], task_id, 1)
        assert len(r) == 1
        service.update_event_ranges(
            [
                {
                    "eventRangeID": r[0]["eventRangeID"],
                    "eventStatus": "failed",
                    "errorCode": 65,
                    "errorDiag": "payload crashed",
                }
            ]
        )
    assert service.acquire_event_ranges(job["PandaID"], task_id, 1) == []
    shown = service.show_task(task_id)
    assert shown["status"] == "failed" and shown["ranges"] == {"failed": 1}
    with pytest.raises(IllegalStateChange):
        service.kill_task(task_id)
    assert service.retry_task(task_id) == "running"
    assert service.show_task(task_id)["ranges"] == {"ready": 1}


def test_system_class_failures_do_not_use_up_attempts(service):
    rule = service.add_error_rule("event", 1099, "stage-?in", "system")
    task_id = service.submit_task(task_dict(events=10, max_attempts=1))
    job = service.acquire_jobs("SITE")[0]
    for _ in range(4):
        r = service.acquire_event_ranges(job["PandaID"], task_id, 1)[0]
        service.update_event_ranges(
            [
                {
                    "eventRangeID": r["eventRangeID"],
                    "eventStatus": "failed",
                    "errorCode": 1099,
                    "errorDiag": "stage-in failed",
                }
            ]
        )
    assert service.show_task(task_id)["ranges"] == {"ready": 1}
    assert [e["hits"] for e in service.list_errors() if e["id"] == rule] == [4]
    # the same code with another message is not covered by the rule: it counts, and is suggested
    r = service.acquire_event_ranges(job["PandaID"], task_id, 1)[0]
    service.update_event_ranges(
        [{"eventRangeID": r["eventRangeID"], "eventStatus": "failed", "errorCode": 7, "errorDiag": "segfault"}]
    )
    assert service.show_task(task_id)["status"] == "failed"
    suggested = service.list_errors("suggested")
    assert [(e["source"], e["code"], e["class"]) for e in suggested] == [("event", 7, "payload")]
    promoted = service.promote_error(suggested[0]["id"], "system")
    assert promoted["status"] == "confirmed" and promoted["class"] == "system"
    with pytest.raises(NotFound):
        service.promote_error(9999)


def test_ranges_handed_back_unprocessed_do_not_use_up_attempts(service):
    """The harvester reports ranges a pilot never ran (walltime, drain) as failed with code 60000; the seeded
    confirmed rule makes that a system failure, so a range can come back any number of times."""
    from harvester_edge.agents.monitor import NOT_DONE_DIAG, range_report

    task_id = service.submit_task(task_dict(events=10, max_attempts=1))
    job = service.acquire_jobs("SITE")[0]
    for _ in range(3):
        r = service.acquire_event_ranges(job["PandaID"], task_id, 1)[0]
        service.update_event_ranges([range_report(r["eventRangeID"], "not-done")])
    assert service.show_task(task_id)["ranges"] == {"ready": 1}
    seeded = [e for e in service.list_errors() if (e["source"], e["code"]) == ("event", 60000)]
    assert [(e["class"], e["status"], e["hits"]) for e in seeded] == [("system", "confirmed", 3)]
    assert NOT_DONE_DIAG.startswith("not processed")


def test_watchdog_fails_silent_jobs_with_code_100_and_releases_ranges(service, clock):
    task_id = service.submit_task(task_dict(events=50, max_attempts=3))
    job = service.acquire_jobs("SITE")[0]
    held = service.acquire_event_ranges(job["PandaID"], task_id, 3)
    finish(service, held[:1])
    clock.now += 3000
    assert service.run_watchdog() == []  # within the timeout
    service.update_job(job["PandaID"], "running")
    clock.now += 3601
    assert service.run_watchdog() == [job["PandaID"]]
    shown = service.show_task(task_id)
    lost = next(j for j in shown["jobs"] if j["panda_id"] == job["PandaID"])
    assert (lost["status"], lost["dispatcher_error_code"], lost["dispatcher_error_diag"]) == (
        "failed",
        100,
        "lost heartbeat",
    )
    assert shown["ranges"] == {"ready": 4, "finished": 1}
    # a replacement job exists with the next attempt number; the lost pilot's late reports are stale
    replacement = [j for j in shown["jobs"] if j["status"] == "activated"]
    assert len(replacement) == 1 and replacement[0]["attempt_nr"] == 2
    assert finish(service, held[1:])["Results"] == ["stale", "stale"]
    with pytest.raises(IllegalStateChange):
        service.update_job(job["PandaID"], "running")


def test_job_state_machine(service):
    service.submit_task(task_dict())
    job = service.acquire_jobs("SITE")[0]["PandaID"]
    for state in ("starting", "running", "running", "finished", "finished"):
        assert service.update_job(job, state) == "NULL"
    with pytest.raises(IllegalStateChange):
        service.update_job(job, "running")
    with pytest.raises(InvalidInput):
        service.update_job(job, "exploded")
    with pytest.raises(NotFound):
        service.update_job(424242, "running")
    with pytest.raises(InvalidInput):
        service.update_job("1", "running")
    answers = service.update_jobs_bulk(
        [{"jobId": job, "state": "finished"}, {"jobId": 777, "state": "running"}, "junk"]
    )
    assert [a["StatusCode"] for a in answers] == [0, 50, 50]


def test_kill_cancels_ranges_and_tells_pilots(service):
    task_id = service.submit_task(task_dict(events=40, jobs=2))
    job = service.acquire_jobs("SITE")[0]["PandaID"]
    held = service.acquire_event_ranges(job, task_id, 2)
    assert service.kill_task(task_id) == "aborted"
    assert service.update_job(job, "running") == "tobekilled"
    assert service.acquire_event_ranges(job, task_id, 2) == []
    assert finish(service, held)["Results"] == ["ignored", "ignored"]
    shown = service.show_task(task_id)
    assert shown["ranges"] == {"cancelled": 4}
    assert sorted(j["status"] for j in shown["jobs"]) == ["cancelled", "running"]
    assert service.acquire_jobs("SITE") == []
    assert service.retry_task(task_id) == "running"
    assert service.show_task(task_id)["ranges"] == {"ready": 4}


def test_concurrent_acquires_never_share_a_range(service):
    task_id = service.submit_task(task_dict(events=4000, events_per_range=1, jobs=8))
    jobs = [j["PandaID"] for j in service.acquire_jobs("SITE", 8)]
    service.db.start_writer()
    got: list[list[str]] = [[] for _ in jobs]

    def run(i: int) -> None:
        while True:
            batch = service.acquire_event_ranges(jobs[i], task_id, 7)
            if not batch:
                return
            got[i].extend(r["eventRangeID"].split("-")[3] for r in batch)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    flat = [p for g in got for p in g]
    assert len(flat) == 4000 and len(set(flat)) == 4000
    assert sum(1 for g in got if g) > 1  # really concurrent


def test_bad_task_files_name_file_key_and_expectation(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\npayload: {kind: python, callable: 'a:b'}\nevents: -5\nevents_per_range: 1\n"
        "seconds_per_event: 1\ncolour: red\n"
    )
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    text = str(err.value)
    assert str(path) in text and "events" in text and "greater than 0" in text and "colour" in text
    with pytest.raises(ConfigError, match="template"):
        parse_task(task_dict(payload={"kind": "command"}))
    (tmp_path / "notyaml.yaml").write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_task_file(tmp_path / "notyaml.yaml")


def test_example_task_file_is_valid():
    from pathlib import Path

    spec = load_task_file(Path(__file__).parents[2] / "configs" / "tasks" / "example.yaml")
    assert spec.events >= 1000 and spec.payload.kind == "python"


def test_mixed_finish_reports_apply_only_the_held_ones(service):
    """One request finishing ranges of one task, some held as reported and some not (a stale attempt, a
    duplicate): those held are applied, the others are answered by what they are; on PostgreSQL the held ones
    are finished by the one-statement path (store/ranges.py finish_held) and the others by the general one."""
    task_id = service.submit_task(task_dict(events=60, max_attempts=5))
    job = service.acquire_jobs("SITE")[0]["PandaID"]
    a, b, c, d = service.acquire_event_ranges(job, task_id, 4)
    assert finish(service, [d])["Results"] == ["applied"]
    service.update_event_ranges([{"eventRangeID": b["eventRangeID"], "eventStatus": "failed", "errorCode": 1}])
    b2 = service.acquire_event_ranges(job, task_id, 1)[0]
    assert b2["eventRangeID"].endswith("-2") and b2["eventRangeID"][:-2] == b["eventRangeID"][:-2]
    out = finish(service, [a, b, c, d])
    assert out["Results"] == ["applied", "stale", "applied", "duplicate"]
    assert out["Returns"] == [True, False, True, True]
    assert service.show_task(task_id)["ranges"] == {"finished": 3, "sent": 1, "ready": 2}
    # the rest, then the task is done: its last report settles it
    rest = service.acquire_event_ranges(job, task_id, 10)
    assert finish(service, [b2, *rest])["Results"] == ["applied"] * 3
    shown = service.show_task(task_id)
    assert shown["status"] == "finished" and shown["events_finished"] == 60


def test_running_update_of_a_running_job_and_its_refusals(service):
    """A pilot's repeated state (PostgreSQL: one statement, store/jobs.py report_same_state) keeps the general
    path's answers: the command, an unknown job, a refused field writes nothing, a state change still checked."""
    task_id = service.submit_task(task_dict(events=10))
    job = service.acquire_jobs("SITE")[0]["PandaID"]
    assert service.update_job(job, "running", {"nEvents": 5, "coreCount": 4}) == "NULL"
    assert service.update_job(job, "running", {"nEvents": 3}) == "NULL"
    shown = {j["panda_id"]: j for j in service.show_task(task_id)["jobs"]}[job]
    assert (shown["status"], shown["n_events"]) == ("running", 5)  # events never fewer
    with pytest.raises(NotFound):
        service.update_job(job + 1000, "running")
    with pytest.raises(InvalidInput):
        service.update_job(job, "running", {"coreCount": "many", "nEvents": 9})
    assert {j["panda_id"]: j for j in service.show_task(task_id)["jobs"]}[job]["n_events"] == 5
    service.kill_task(task_id)
    assert service.update_job(job, "running") == "tobekilled"
    service.update_job(job, "failed", {"pilotErrorCode": 1})
    with pytest.raises(IllegalStateChange):
        service.update_job(job, "running")


def ids(ranges: list[dict]) -> list[int]:
    return [int(r["eventRangeID"].split("-")[3]) for r in ranges]


def test_a_failed_range_goes_out_again_before_the_next_ones(service):
    """The ready range with the lowest number goes out first, also one that failed behind the ranges already
    handed out (on PostgreSQL the writer's floor goes below it: store/ranges.py)."""
    task = service.submit_task(task_dict(events=100, events_per_range=10, jobs=2, max_attempts=3))
    job = service.acquire_jobs("SITE")[0]["PandaID"]
    first = service.acquire_event_ranges(job, task, 4)
    assert ids(first) == [1, 2, 3, 4]
    rid = first[1]["eventRangeID"]
    report = [{"eventRangeID": rid, "eventStatus": "failed", "errorCode": 1}]
    assert service.update_event_ranges(report)["Results"] == ["applied"]
    assert ids(service.acquire_event_ranges(job, task, 2)) == [2, 5]
    finish(service, first[:1] + first[2:])
    assert service.kill_task(task) == "aborted"
    assert service.retry_task(task) == "running"  # every range not finished is ready again, from the lowest
    job = service.acquire_jobs("SITE")[0]["PandaID"]
    assert ids(service.acquire_event_ranges(job, task, 10)) == [2, 5, 6, 7, 8, 9, 10]


def test_ranges_made_ready_by_another_service_process_go_out_within_the_floor_ttl(pg_cluster, tmp_path, clock):
    """PostgreSQL, two service processes (own writers): what one makes ready below the other's floor is handed
    out by the other within FLOOR_TTL, or at once when its claims above the floor come up short; never twice."""
    from harvester_edge.central.store import ranges as range_rows

    url = pg_cluster.fresh_database()
    one, two = (CentralService.open(url, db_settings(url, tmp_path, heartbeat_timeout=3600), clock) for _ in "12")
    try:
        task = one.submit_task(task_dict(events=100, events_per_range=10, jobs=2, max_attempts=3))
        a, b = (j["PandaID"] for j in one.acquire_jobs("SITE", 2))
        held = one.acquire_event_ranges(a, task, 4)  # one's floor: 5
        report = [{"eventRangeID": held[1]["eventRangeID"], "eventStatus": "failed", "errorCode": 1}]
        assert two.update_event_ranges(report)["Results"] == ["applied"]  # range 2 ready again, one does not know
        assert ids(one.acquire_event_ranges(b, task, 2)) == [5, 6]  # from its floor
        time.sleep(range_rows.FLOOR_TTL + 0.1)  # the floor is forgotten: the next claim starts at the first range
        assert ids(one.acquire_event_ranges(b, task, 2)) == [2, 7]
        report = [{"eventRangeID": r["eventRangeID"], "eventStatus": "failed", "errorCode": 1} for r in held[2:]]
        assert two.update_event_ranges(report)["Results"] == ["applied"] * 2  # 3 and 4 ready again
        # above one's floor (8) only 8, 9 and 10 are ready: a claim of 4 comes up short there and looks below it
        assert sorted(ids(one.acquire_event_ranges(a, task, 4))) == [3, 8, 9, 10]
        assert ids(one.acquire_event_ranges(a, task, 4)) == [4]
        assert one.acquire_event_ranges(a, task, 4) == []
        counts = dict(db_rows(url, "SELECT status, count(*) FROM ranges WHERE task_id=? GROUP BY status", (task,)))
        assert counts == {1: 10}  # each range held once, none left ready
    finally:
        one.close()
        two.close()


def test_the_floors_of_tasks_gone_quiet_are_dropped():
    """A long-lived writer meets many tasks: expired floors go once FLOORS_KEPT are held (no growth without end)."""
    from types import SimpleNamespace

    from harvester_edge.central.store import ranges as range_rows

    conn = SimpleNamespace(floors={t: (5, 0.0) for t in range(range_rows.FLOORS_KEPT)})  # all long expired
    conn.floors[-1] = (3, time.monotonic() + 60)  # one still fresh
    range_rows._raise_floor(conn, 10**6, 7, 0)
    assert sorted(conn.floors) == [-1, 10**6] and conn.floors[10**6][0] == 7
    assert range_rows._floor(conn, 10**6) == 7 and range_rows._floor(conn, 12345) == 0
