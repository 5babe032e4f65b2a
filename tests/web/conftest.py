"""Fixtures for the web monitor: a seeded central DB + harvester DB side by side (the embedded layout), the real
central service serving them on 127.0.0.1, and a headless Debian Chromium driven through Selenium."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from harvester_edge.central.server import EmbeddedCentral
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.server import embedded_central
from harvester_edge.store import open_store
from helpers import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAYLOAD = {"kind": "python", "callable": "jumbo.payloads:simulate", "args": {"size": 8}}
T0 = 1_795_000_000.0


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing and CI=true: scripts/setup must install it")
    pytest.skip(f"{what} is missing (scripts/setup installs it)")


def seed_central(path: Path) -> dict:
    """A task of 100 events: 3 ranges finished, 2 failed once with code 65 'payload crashed' (retried), 2 sent."""
    svc = CentralService.open(path, CentralSettings(db=path))
    try:
        task_id = svc.submit_task(
            {
                "name": "seeded",
                "payload": PAYLOAD,
                "events": 100,
                "events_per_range": 10,
                "seconds_per_event": 0.1,
                "jobs": 1,
                "max_attempts": 3,
            }
        )
        job = svc.acquire_jobs("q", harvester_id="harvester-t", worker_id="1")[0]
        ranges = svc.acquire_event_ranges(job["PandaID"], task_id, 5)
        svc.update_event_ranges([{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in ranges[:3]])
        svc.update_event_ranges(
            [
                {
                    "eventRangeID": r["eventRangeID"],
                    "eventStatus": "failed",
                    "errorCode": 65,
                    "errorDiag": "payload crashed",
                }
                for r in ranges[3:]
            ]
        )
        svc.acquire_event_ranges(job["PandaID"], task_id, 2)  # in flight: handed out again after the failures
        svc.heartbeat("harvester-t", {"site": "t"})
        return {"task_id": task_id, "panda_id": job["PandaID"], "rule": svc.list_errors("suggested")[0]["id"]}
    finally:
        svc.close()


def seed_harvester(path: Path, ap: Path, panda_id: int, task_id: int) -> int:
    """One queue, the job, one finished worker with a full access point, its state history and ranges."""
    ap.mkdir(parents=True)
    (ap / "logs").mkdir()
    (ap / "worker.sh").write_text("#!/bin/bash\n# harvester-edge local worker 1\nmpirun -n 2 jumbo-pilot\n")
    (ap / "local.out").write_text("payload says hello on stdout\n")
    (ap / "local.err").write_text(
        "".join(f"2026-11-22 05:30:{i:02d},000 rank0 jumbo.pilot INFO step {i}\n" for i in range(40))
    )
    (ap / "logs" / "payload.0.log").write_text("PAYLOAD-LOG-LINE event 1..10 ok\n")
    for rank in (0, 1):
        with (ap / f"prmon.{rank}.jsonl").open("w") as fh:
            for i in range(20):
                fh.write(
                    json.dumps(
                        {
                            "time": T0 + i,
                            "rank": rank,
                            "rss": (50 + i * (rank + 1)) * 2**20,
                            "pss": 1,
                            "vmem": 1,
                            "utime": i * 0.5,
                            "stime": 0.1,
                            "nprocs": 2,
                        }
                    )
                    + "\n"
                )
    (ap / "jobReport.json").write_text(
        json.dumps(
            {"protocol": 1, "wallTime": 21.0, "cpuTime": 19.5, "maxRSS": 70 * 2**20, "endReason": "no more ranges"}
        )
    )
    store = open_store(path)
    try:
        with store.write() as conn:
            conn.execute("INSERT INTO queues VALUES ('q', 'local', 0, ?)", (T0,))
            conn.execute(
                "INSERT INTO jobs (panda_id, task_id, queue, state, spec, events_total, events_done, "
                "created_at, updated_at) VALUES (?, ?, 'q', 'running', '{}', 100, 30, ?, ?)",
                (panda_id, task_id, T0, T0),
            )
            conn.execute(
                "INSERT INTO workers (queue, state, job_name, batch_id, access_point, nodes, "
                "ranks_per_node, walltime, exit_code, submitted_at, started_at, ended_at, created_at, "
                "updated_at) VALUES ('q', 'finished', 'he-t-w000001', 'local:4242', ?, 1, 2, 300, 0, "
                "?, ?, ?, ?, ?)",
                (str(ap), T0, T0 + 4, T0 + 30, T0, T0 + 30),
            )
            conn.execute("INSERT INTO job_workers (panda_id, worker_id) VALUES (?, 1)", (panda_id,))
            for i, (src, dst) in enumerate(
                (("new", "submitting"), ("submitting", "queued"), ("queued", "running"), ("running", "finished"))
            ):
                conn.execute(
                    "INSERT INTO state_history (kind, object_id, src, dst, at, reason) VALUES "
                    "('workers', '1', ?, ?, ?, ?)",
                    (src, dst, T0 + i, f"step {i}"),
                )
            conn.execute(
                "INSERT INTO event_ranges (range_id, panda_id, worker_id, state, first_event, last_event, "
                "spec, updated_at) VALUES ('r1', ?, 1, 'finished', 1, 10, '{}', ?)",
                (panda_id, T0),
            )
            conn.execute(
                "INSERT INTO outbox (kind, state, payload, created_at, updated_at) VALUES "
                "('update_jobs', 'pending', '{}', ?, ?)",
                (T0, T0),
            )
    finally:
        store.close()
    return 1


@pytest.fixture
def seeded(tmp_path) -> dict:
    work = tmp_path / "work"
    work.mkdir()
    ids = seed_central(work / "central.db")
    ids["worker_id"] = seed_harvester(
        work / "harvester.db", work / "workers" / "w000001", ids["panda_id"], ids["task_id"]
    )
    ids["work"] = work
    return ids


def start(work: Path, trusted: bool = True) -> EmbeddedCentral:
    central = embedded_central(CentralSettings(db=work / "central.db", host="127.0.0.1", port=0, trusted=trusted))
    central.start()
    return central


@pytest.fixture
def monitor(seeded):
    """(base URL, seeded ids) of the real central service in trusted mode over the seeded DBs."""
    central = start(seeded["work"])
    yield central.url, seeded
    central.stop()


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, timeout=10, **kwargs)


@pytest.fixture
def browser():
    """Headless Debian Chromium through Selenium and /usr/bin/chromedriver, with no network but loopback."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium (pip)")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        _missing("Chromium (apt: chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
        # no network but loopback, like a login node: anything else goes to a closed port
        "--proxy-server=http://127.0.0.1:9",
    ):  # (Chromium never sends loopback to a proxy)
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
