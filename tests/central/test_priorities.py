"""Task priority and share (issue 17 item 5; central/dispatch_order.py), both backends: a high-priority task's
ranges overtake the remaining ones of a running task (a real server and its client; priority set while both run);
a share caps a task's running jobs while another task waits, and gives way when none waits."""

from __future__ import annotations

import sqlite3
from collections import Counter

import pytest
import requests

from harvester_edge.central.client import CentralClient
from harvester_edge.central.errors import IllegalStateChange, InvalidInput
from harvester_edge.central.service import CentralService
from harvester_edge.seams.http import HttpTransport

from .conftest import db_settings, task_dict


@pytest.fixture
def client(trusted_central):
    transport = HttpTransport(trusted_central.url, timeout=10)
    yield CentralClient(transport, harvester_id="h1")
    transport.close()


def run_job(client: CentralClient, job: dict, n: int, order: list[tuple[int, int]]) -> None:
    """A pilot: take up to n ranges at a time, finish them, until the task has none; then finish the job."""
    task_id = job["taskID"]
    while True:
        ranges = client.acquire_event_ranges(job["PandaID"], task_id, task_id, n)
        if not ranges:
            break
        order += [(task_id, r["startEvent"]) for r in ranges]
        client.update_event_ranges([{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in ranges])
    client.update_job(job["PandaID"], "finished", n_events=0)


def test_a_high_priority_task_overtakes_a_running_one(client, trusted_central):
    url = trusted_central.url + "/api/v1"
    low = client.submit_task(task_dict(name="low", events=100, events_per_range=10, jobs=2))
    first = client.acquire_jobs("SITE", n_jobs=1, harvester_id="h1")[0]
    assert first["taskID"] == low
    order: list[tuple[int, int]] = []
    held = client.acquire_event_ranges(first["PandaID"], low, low, 3)  # the running task is under way
    order += [(low, r["startEvent"]) for r in held]
    client.update_event_ranges([{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in held])
    high = client.submit_task(task_dict(name="high", events=50, events_per_range=10, jobs=1))
    # equal priorities: the older task's waiting job would go first (the order of old) ...
    plan = trusted_central.service.db.query(
        "SELECT task_id, min(panda_id) FROM jobs WHERE status='activated' GROUP BY 1"
    )
    assert min(plan, key=lambda r: r[1])[0] == low
    # ... until an operator raises the new task's priority while both are defined/running
    answer = requests.post(f"{url}/task/set", json={"task_id": high, "priority": 100}, timeout=10).json()
    assert answer["data"] == {"task_id": high, "priority": 100, "share": None}
    second = client.acquire_jobs("SITE", n_jobs=1, harvester_id="h1")[0]
    assert second["taskID"] == high  # overtakes low's older waiting job
    run_job(client, second, 2, order)
    third = client.acquire_jobs("SITE", n_jobs=1, harvester_id="h1")[0]
    assert third["taskID"] == low
    run_job(client, third, 4, order)
    run_job(client, first, 4, order)
    tasks = [t for t, _ in order]
    assert tasks == [low] * 3 + [high] * 5 + [low] * 7  # all of high's ranges before low's remaining ones
    assert sorted(e for t, e in order if t == low) == list(range(1, 101, 10))
    shown = {t["task_id"]: t for t in client.call("GET", "task/list")}
    assert shown[high]["status"] == "finished" and shown[high]["priority"] == 100
    assert shown[low]["status"] == "finished" and shown[low]["priority"] == 0


def test_priority_given_at_submit_orders_the_dispatch(service):
    a = service.submit_task(task_dict(name="a", jobs=2))
    b = service.submit_task(task_dict(name="b", jobs=2, priority=5))
    c = service.submit_task(task_dict(name="c", jobs=2, priority=-5))
    assert Counter(j["taskID"] for j in service.acquire_jobs("SITE", n_jobs=3)) == {b: 2, a: 1}
    assert Counter(j["taskID"] for j in service.acquire_jobs("SITE", n_jobs=3)) == {a: 1, c: 2}
    d = service.submit_task(task_dict(name="d", jobs=1))
    e = service.submit_task(task_dict(name="e", jobs=1))  # equal priorities: the oldest job first, as before
    assert [j["taskID"] for j in service.acquire_jobs("SITE", n_jobs=1)] == [d]
    assert [j["taskID"] for j in service.acquire_jobs("SITE", n_jobs=1)] == [e]


def test_priority_and_share_are_checked_and_only_for_active_tasks(service):
    task_id = service.submit_task(task_dict())
    with pytest.raises(InvalidInput):
        service.set_task_dispatch(task_id, priority=10**7)
    with pytest.raises(InvalidInput):
        service.set_task_dispatch(task_id, share=1.5)
    with pytest.raises(InvalidInput):
        service.set_task_dispatch(task_id, share=0)
    assert service.set_task_dispatch(task_id, share=0.5)["share"] == 0.5
    assert service.set_task_dispatch(task_id, priority=3) == {"task_id": task_id, "priority": 3, "share": 0.5}
    assert service.set_task_dispatch(task_id, clear_share=True)["share"] is None
    service.kill_task(task_id)
    with pytest.raises(IllegalStateChange):
        service.set_task_dispatch(task_id, priority=1)


def running(service) -> dict[int, int]:
    rows = service.db.query("SELECT task_id, count(*) FROM jobs WHERE status='sent' GROUP BY task_id")
    return {r[0]: r[1] for r in rows}


def test_a_share_caps_running_jobs_while_others_wait(service):
    capped = service.submit_task(task_dict(name="capped", events=200, jobs=8, share=0.25))
    other = service.submit_task(task_dict(name="other", events=200, jobs=10))
    service.acquire_jobs("SITE", n_jobs=4)
    assert running(service) == {capped: 1, other: 3}  # a quarter of the running jobs, though capped is older
    service.set_task_dispatch(capped, share=0.5)  # changed while both run
    service.acquire_jobs("SITE", n_jobs=4)
    assert running(service) == {capped: 4, other: 4}  # now half
    service.kill_task(other)  # nobody else waits: the share gives way (no worker left idle)
    service.acquire_jobs("SITE", n_jobs=10)
    assert running(service) == {capped: 8, other: 4}  # other's 4 were told to stop (tobekilled)


def _run_sql(backend: str, central_db, *statements: str) -> None:
    if backend == "sqlite":
        with sqlite3.connect(central_db) as conn:
            for sql in statements:
                conn.execute(sql)
        return
    import psycopg

    with psycopg.connect(str(central_db), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def test_an_older_database_gains_the_new_columns_and_table(backend, central_db, tmp_path):
    """A central DB made before issue 17 (no tasks.priority/share, no error_class_changes) is upgraded on open,
    on both backends; so is one that lacks only the new table."""
    settings = db_settings(central_db, tmp_path)
    svc = CentralService.open(central_db, settings)
    task_id = svc.submit_task(task_dict())
    svc.close()
    _run_sql(
        backend,
        central_db,
        "ALTER TABLE tasks DROP COLUMN priority",
        "ALTER TABLE tasks DROP COLUMN share",
        "DROP TABLE error_class_changes",
    )
    svc = CentralService.open(central_db, settings)
    try:
        assert svc.show_task(task_id)["priority"] == 0 and svc.show_task(task_id)["share"] is None
        assert svc.set_task_dispatch(task_id, priority=2, share=0.5)["priority"] == 2
        rule_id = svc.add_error_rule("pilot", 1, "", "fatal", who="upgrade")
        assert [h["rule_id"] for h in svc.error_history()] == [rule_id]
    finally:
        svc.close()
    _run_sql(backend, central_db, "DROP TABLE error_class_changes")
    svc = CentralService.open(central_db, settings)
    try:
        assert svc.error_history() == []
        svc.delete_error_rule(rule_id, who="upgrade")
        assert [h["action"] for h in svc.error_history()] == ["delete"]
    finally:
        svc.close()
