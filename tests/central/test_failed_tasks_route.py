"""GET /api/v1/harvester/get_failed_tasks (a remote site's task_failed alert reads it), on both backends: the failed
tasks one harvester had jobs of, newest first, bounded; a harvester token asks for itself only."""

from __future__ import annotations

import time

import requests

from harvester_edge.central.store import tasks

from .conftest import task_dict

PATH = "/api/v1/harvester/get_failed_tasks"


def get(url: str, token: str, **params) -> requests.Response:
    return requests.get(url + PATH, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_failed_tasks_of_one_harvester_newest_first_bounded_and_its_own_only(token_central):
    url, auth, svc = token_central.url, token_central.authority, token_central.service
    site_a, _ = auth.pilot_credentials("site-a", ("harvester",))
    site_b, _ = auth.pilot_credentials("site-b", ("harvester",))
    admin, _ = auth.pilot_credentials("ops", ("admin", "harvester"))
    ids = [svc.submit_task(task_dict(name=f"t{n}", jobs=1)) for n in range(4)]
    # t0, t1, t3 ran at site-a, t2 at site-b: one job each
    for task_id, harvester in zip(ids, ("site-a", "site-a", "site-b", "site-a"), strict=True):
        [job] = svc.acquire_jobs("SITE", 1, harvester_id=harvester)
        assert job["taskID"] == task_id  # FIFO dispatch: each task's job in turn
    now = time.time()
    for n, task_id in enumerate(ids[:3]):  # t0..t2 fail, in that order; t3 keeps running
        svc.db.write(tasks.close, task_id, "failed", f"diag {n}", now + n)

    answer = get(url, site_a, harvester_id="site-a").json()
    assert answer["success"] is True
    assert [t["task_id"] for t in answer["data"]["tasks"]] == [ids[1], ids[0]]  # newest first, site-b's not here
    assert answer["data"]["tasks"][0]["name"] == "t1" and answer["data"]["tasks"][0]["diag"] == "diag 1"
    assert answer["data"]["truncated"] is False

    bounded = get(url, site_a, harvester_id="site-a", limit=1).json()["data"]
    assert [t["task_id"] for t in bounded["tasks"]] == [ids[1]] and bounded["truncated"] is True
    recent = get(url, site_a, harvester_id="site-a", since=now + 1).json()["data"]
    assert [t["task_id"] for t in recent["tasks"]] == [ids[1]]

    assert get(url, site_a, harvester_id="site-b").status_code == 403  # another harvester's: refused
    assert [t["task_id"] for t in get(url, admin, harvester_id="site-b").json()["data"]["tasks"]] == [ids[2]]
    assert get(url, site_a, harvester_id="site-a", limit=1001).json()["success"] is False  # over the bound
    assert requests.get(url + PATH, params={"harvester_id": "site-a"}, timeout=10).status_code == 403  # no token

    svc.retry_task(ids[1])
    assert [t["task_id"] for t in get(url, site_a, harvester_id="site-a").json()["data"]["tasks"]] == [ids[0]]
