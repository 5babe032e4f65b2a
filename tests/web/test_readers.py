"""Monitor pages and /metrics are built in reader processes (web/readers.py), so page views cannot take the event
loop (and the GIL) from the API: issue 15 item 3. Real service on 127.0.0.1, real reader processes."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import requests

from harvester_edge.web import readers

from .conftest import get


def test_reader_process_is_another_process_with_lower_priority() -> None:
    pid, nice = asyncio.run(readers.run(os.getpid)), asyncio.run(readers.run(os.nice, 0))
    assert pid != os.getpid()
    assert nice >= min(19, os.nice(0) + readers.NICE)


def test_api_answers_while_every_reader_is_busy(monitor) -> None:
    """With the reader processes all held by a slow job, a monitor page waits for them but the API does not."""
    url, ids = monitor
    assert get(f"{url}/monitor/").status_code == 200  # the pool is up (spawned once)
    hold = 3.0
    holders = [
        threading.Thread(target=lambda: asyncio.run(readers.run(time.sleep, hold))) for _ in range(readers.PROCESSES)
    ]
    started = time.monotonic()
    for t in holders:
        t.start()
    time.sleep(0.3)  # the sleeps have reached the reader processes
    page: dict[str, float] = {}

    def view() -> None:
        answer = get(f"{url}/monitor/task/{ids['task_id']}")
        page["status"], page["at"] = answer.status_code, time.monotonic() - started

    viewer = threading.Thread(target=view)
    viewer.start()
    api_at = []
    for _ in range(5):
        answer = requests.get(f"{url}/api/v1/task/show", params={"task_id": ids["task_id"]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["success"], answer.text[:300]
        api_at.append(time.monotonic() - started)
    viewer.join(30)
    for t in holders:
        t.join(30)
    assert max(api_at) < hold - 0.5, f"the API waited for the monitor's readers: answered at {api_at}"
    assert page["status"] == 200
    assert page["at"] >= hold - 0.5, f"the page was not built by the reader processes (answered at {page['at']})"


def test_metrics_keep_in_process_timings(monitor) -> None:
    """/metrics: DB counts from the reader process plus this process's HTTP timings."""
    url, _ = monitor
    get(f"{url}/monitor/")
    text = get(f"{url}/metrics").text
    assert "harvester_edge_central_tasks" in text and "harvester_edge_workers" in text, text[:500]
    assert "harvester_edge_http_request" in text, text[:2000]
