"""Payload logs end to end: real mpirun pilots under the real daemon (local plugin) run a payload that prints to
stdout and stderr; the daemon ships each rank's JSON lines to the embedded central service, where they arrive once
each (across a daemon SIGKILL), tagged with their task, job, worker, rank and range; HTTP filters, the CLI (also
--follow) and the monitor page show them; the job's bound truncates with a mark; hostile log files are refused
with a clear reason and nothing else breaks; the archive of a cleaned access point holds the JSON-lines files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
import threading
import time
from collections import Counter

import pytest

from agents.conftest import CLI
from helpers import FAST_AGENTS, local_queue, wait_for
from web.conftest import get, start

pytestmark = pytest.mark.mpi

AGENTS = {**FAST_AGENTS, "paylogs": "0.5s"}


def chatty_task(events: int, seconds_per_event: float, per_range: int = 5, **args) -> dict:
    return {
        "name": "chatty",
        "payload": {
            "kind": "python",
            "callable": "jumbo.payloads:chatty",
            "args": {"seconds_per_event": seconds_per_event, **args},
        },
        "events": events,
        "events_per_range": per_range,
        "seconds_per_event": seconds_per_event,
        "memory_per_rank_mb": 100,
        "max_attempts": 3,
        "jobs": 1,
    }


def stored(site, task_id: int) -> list[tuple]:
    with site.central_db() as conn:
        return conn.execute(
            "SELECT panda_id, task_id, worker_id, rank_nr, range_id, stream, msg FROM payload_logs WHERE task_id = ?",
            (task_id,),
        ).fetchall()


def test_lines_arrive_once_tagged_and_are_shown_filtered_and_archived(make_site, tmp_path):
    archives = tmp_path / "archives"
    site = make_site(
        queue=local_queue(None),
        agents=AGENTS,
        paths={"archives": str(archives)},
        daemon={"cleanup_delay": "3s"},
    )
    events = 40
    task_id = site.submit_task(**chatty_task(events, 0.05))
    site.start()
    wait_for(lambda: len(stored(site, task_id)) >= 10, 120, "the first lines at the central service")
    site.kill()  # SIGKILL between batches or in the middle of one: nothing is lost, nothing stored twice
    site.start()
    assert site.wait_task(task_id, 180)["status"] == "finished"
    wait_for(lambda: len(stored(site, task_id)) >= 2 * events, 60, "every line at the central service")
    time.sleep(1.5)  # a few more shipping cycles: a line sent twice would show now
    rows = stored(site, task_id)
    msgs = Counter((r[5], r[6].split(" range ")[0]) for r in rows)
    want = {("stdout", f"out event {e} line 0") for e in range(1, events + 1)}
    want |= {("stderr", f"err event {e}") for e in range(1, events + 1)}
    assert set(msgs) == want and set(msgs.values()) == {1}, msgs  # each line once
    with site.harvester_db() as hconn:
        workers = {r[0] for r in hconn.execute("SELECT id FROM workers")}
        job = hconn.execute("SELECT panda_id FROM jobs WHERE task_id = ?", (task_id,)).fetchone()[0]
    for panda_id, task, worker, rank, range_id, _stream, msg in rows:
        assert (panda_id, task) == (job, task_id) and worker in workers and rank in (0, 1)
        assert msg.endswith(f"range {range_id}") or f"range {range_id} " in msg  # tagged with its own range
        assert range_id.startswith(f"{task_id}-{job}-")

    central = start(site.work)  # the service over this site's DBs (the daemon's stays private to it)
    try:
        url = central.url

        def lines(**params) -> list[dict]:
            answer = get(f"{url}/api/v1/logs/list", params={"task_id": task_id, **params})
            assert answer.status_code == 200, answer.text
            return answer.json()["data"]["lines"]

        assert len(lines()) == 2 * events
        assert {r["rank"] for r in lines(rank=1)} == {1} and lines(rank=1)
        assert {r["stream"] for r in lines(stream="stderr")} == {"stderr"} and len(lines(stream="stderr")) == events
        assert [r["msg"].split(" range ")[0] for r in lines(grep="out event 7 ")] == ["out event 7 line 0"]
        assert [r["msg"].split(" range ")[0] for r in lines(grep="err event 7 ")] == ["err event 7"]
        assert len(lines(panda_id=job)) == 2 * events and lines(panda_id=job + 1000) == []
        first = lines(limit=5)
        rest = get(f"{url}/api/v1/logs/list", params={"task_id": task_id, "after": first[-1]["id"]}).json()["data"]
        assert len(rest["lines"]) == 2 * events - 5 and rest["truncated"] == []

        page = get(f"{url}/monitor/logs", params={"task": task_id, "stream": "stderr", "grep": "event 3 "})
        assert page.status_code == 200
        assert "err event 3 " in page.text and "out event" not in page.text and "err event 4 " not in page.text
        assert 'http-equiv="refresh" content="5"' in page.text  # it follows
        assert get(f"{url}/monitor/logs", params={"rank": "x"}).status_code == 400
        assert f"/monitor/logs?task={task_id}" in get(f"{url}/monitor/task/{task_id}").text
    finally:
        central.stop()

    out = site.cli("logs", "--task", str(task_id), "--rank", "0", "--stream", "stdout").stdout.splitlines()
    assert out and all(" rank 0 " in line and " stdout | out event " in line for line in out), out[:5]

    ended = site.wait_workers_ended()
    wait_for(lambda: all((archives / f"worker-{w[0]}.tar.gz").exists() for w in ended), 60, "every worker archived")
    site.stop()
    with tarfile.open(archives / f"worker-{ended[0][0]}.tar.gz") as tar:
        names = tar.getnames()
        jsonl = [n for n in names if re.fullmatch(r"logs/payload\.\d+\.jsonl", n)]
        assert jsonl, names
        record = json.loads(tar.extractfile(jsonl[0]).readline())
    assert record["task"] == task_id and record["job"] == job and record["stream"] in ("stdout", "stderr")


def test_bound_truncation_hostile_files_and_follow(make_site, tmp_path):
    site = make_site(
        queue=local_queue(None),
        agents=AGENTS,
        central={"mode": "embedded", "trusted": True, "payload_log_max_mb": 4000 / (1024 * 1024)},
    )
    task_id = site.submit_task(**chatty_task(60, 0.1, per_range=5, pad=60))  # ~9 KB of lines
    follow = subprocess.Popen(
        [*CLI, "--config", str(site.config_path), "logs", "--task", str(task_id), "--follow", "--interval", "0.2"],
        env=site.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    followed: list[str] = []
    reader = threading.Thread(target=lambda: followed.extend(iter(follow.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        site.start()
        # plant hostile files beside the pilot's own in the running worker's logs/
        aps = site.work / "workers"
        wait_for(lambda: any(aps.glob("*/logs/payload.0.jsonl")), 120, "a running pilot's payload log")
        logs = next(aps.glob("*/logs/payload.0.jsonl")).parent
        os.symlink("/etc/passwd", logs / "payload.7.jsonl")
        with open(logs / "payload.8.jsonl", "wb") as fh:  # sparse: 2 GiB that take no disk
            fh.truncate(2 * 1024**3)
        (logs / "payload.9.jsonl").write_bytes(b'not json\n{"job": "x"}\n[1, 2]\n\xff\xfe\n')
        assert site.wait_task(task_id, 180)["status"] == "finished"
        wait_for(lambda: "is a symbolic link" in site.log_tail(400), 30, "the symlink refused")
        text = site.log_tail(400)
        assert re.search(r"payload log payload\.7\.jsonl is not shipped: payload\.7\.jsonl is a symbolic link", text)
        assert re.search(r"payload log payload\.8\.jsonl is not shipped: 2147483648 bytes, over the cap", text)
        assert re.search(r"payload\.9\.jsonl: 4 line\(s\) that are not payload log records skipped", text)
        assert site.daemon.poll() is None  # the daemon goes on

        # the job's bound: the first lines kept (<= 4000 bytes of text), then a truncated mark
        wait_for(lambda: followed, 30, "lines shown by --follow")
        central = start(site.work)
        try:
            got = get(f"{central.url}/api/v1/logs/list", params={"task_id": task_id}).json()["data"]
        finally:
            central.stop()
        assert got["truncated"] and got["truncated"][0]["dropped"] > 0, got["truncated"]
        assert 0 < sum(len(r["msg"].encode()) for r in got["lines"]) <= 4000
        out = site.cli("logs", "--task", str(task_id))
        assert "payload log truncated at its bound" in out.stderr
        assert len(out.stdout.splitlines()) == len(got["lines"])
    finally:
        follow.terminate()
        follow.wait(10)
    # --follow printed lines that were shipped after it started (it began before the daemon did)
    assert len(followed) == len(got["lines"]) and all(" | " in line for line in followed)
