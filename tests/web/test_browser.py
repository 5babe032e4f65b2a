"""End to end in a real browser: the daemon on the embedded default runs a real task on local MPI workers while
headless Chromium walks dashboard -> task -> job -> log, taking a screenshot of each page."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import free_port, kill_local_workers, local_queue

from .conftest import get, wait_for

pytestmark = pytest.mark.mpi
CLI = [sys.executable, "-m", "harvester_edge"]
QUEUE = local_queue(max_running_workers=1)
TASK = {
    "name": "webtask",
    "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.1}},
    "events": 600,
    "events_per_range": 10,
    "seconds_per_event": 0.1,
    "memory_per_rank_mb": 100,
    "max_attempts": 3,
    "jobs": 1,
}


@pytest.fixture
def site(tmp_path):
    """A site config in tmp_path with the embedded central service on a known loopback port, and its daemon."""
    port = free_port()
    work = tmp_path / "work"
    config = tmp_path / "site.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "site": "web",
                "central": {"mode": "embedded", "trusted": True, "host": "127.0.0.1", "port": port},
                "queues": [QUEUE],
                "paths": {"work_dir": str(work)},
                "agents": {
                    "fetcher": "1s",
                    "submitter": "1s",
                    "monitor": "1s",
                    "feeder": "0.3s",
                    "propagator": "0.5s",
                    "sweeper": "2s",
                },
                "daemon": {"stop_timeout": "15s", "lease_time": "30s"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "HARVESTER_EDGE_WORK_DIR"}

    def cli(*args: str) -> str:
        out = subprocess.run(
            [*CLI, "--config", str(config), *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(TASK))
    task_id = json.loads(cli("task", "submit", str(task_file), "--json"))["task_id"]
    with open(tmp_path / "daemon.out", "ab") as log:
        daemon = subprocess.Popen([*CLI, "--config", str(config), "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "task_id": task_id, "cli": cli, "daemon": daemon, "work": work}
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
        kill_local_workers(work)  # local workers this test started


def _up(url: str) -> bool:
    try:
        return get(f"{url}/monitor/").status_code == 200
    except OSError:
        return False


def test_dashboard_task_job_log_while_a_task_runs(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, task_id = site["url"], site["task_id"]
    wait_for(lambda: _up(url), 60, "the central service to serve /monitor/")

    def task_status() -> dict:
        return json.loads(site["cli"]("task", "show", str(task_id), "--json"))

    wait_for(lambda: task_status()["events_finished"] > 0, 90, "the first finished events")
    shots: list[Path] = []

    def shot(name: str) -> None:
        path = tmp_path / f"{len(shots) + 1:02d}-{name}.png"
        assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
        shots.append(path)

    browser.get(f"{url}/monitor/")
    assert browser.title.startswith("dashboard")
    row = browser.find_element(By.CSS_SELECTOR, "table[data-table=tasks] tbody tr")
    assert "webtask" in row.text and "running" in row.text  # the task is still running while we look
    assert browser.find_element(By.CSS_SELECTOR, "svg.chart rect[height]") is not None
    shot("dashboard")

    browser.find_element(By.LINK_TEXT, "webtask").click()
    assert browser.current_url.endswith(f"/monitor/task/{task_id}")
    assert browser.find_element(By.CSS_SELECTOR, ".bar.big > span").get_attribute("style").startswith("width:")
    assert "events finished" in browser.find_element(By.TAG_NAME, "main").text
    shot("task")

    job_link = browser.find_element(By.CSS_SELECTOR, "table[data-table=jobs] tbody tr td a")
    panda_id = job_link.text
    job_link.click()
    assert browser.current_url.endswith(f"/monitor/job/{panda_id}")

    def log_link():
        browser.get(f"{url}/monitor/job/{panda_id}")
        links = [a for a in browser.find_elements(By.CSS_SELECTOR, "a.log") if a.text == "local.err"]
        return links[0] if links else None

    link = wait_for(log_link, 60, "a worker with a pilot log on the job page")
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert any("RSS per rank" in (c.get_attribute("aria-label") or "") for c in charts)
    shot("job")

    link.click()
    assert "/monitor/worker/" in browser.current_url and "name=local.err" in browser.current_url
    wait_for(
        lambda: "jumbo" in browser.find_element(By.CSS_SELECTOR, "pre.log").text or browser.refresh(),
        60,
        "the pilot's log lines in the log page",
    )
    shot("pilot-log")

    final = wait_for(lambda: (t := task_status())["status"] in ("finished", "failed") and t, 180, "the task to end")
    assert final["status"] == "finished" and final["events_finished"] == 600
    browser.get(f"{url}/monitor/task/{task_id}")
    assert "600 of 600 events finished (100.0%)" in browser.find_element(By.TAG_NAME, "main").text
    shot("task-finished")
    print("screenshots:", *shots, sep="\n  ")
