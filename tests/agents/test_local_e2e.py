"""The whole appliance on the embedded default: central service in-process, workers as local MPI process trees."""

from __future__ import annotations

import json
import time

import pytest

from helpers import central_service_config, cli, local_queue, serve_central, wait_for
from jumbo import payloads

pytestmark = pytest.mark.mpi

LOCAL_QUEUE = local_queue(None)


def test_task_completes_exactly_once_and_outputs_recompute(make_site, tasks):
    site = make_site(queue=LOCAL_QUEUE)
    task_id = site.submit_task(**tasks.numpy(1000))
    site.start()
    task = site.wait_task(task_id, timeout=120)
    # the central service counts the task finished with its last range; the pilot hears "no more ranges" once that
    # report went out, and the harvester settles the job when its worker ended: wait for that before stopping
    site.wait_workers_ended()
    deadline = time.monotonic() + 30
    while json.loads(site.cli("status", "--json").stdout)["jobs"] != {"finished": 1}:
        assert time.monotonic() < deadline, site.log_tail()
        time.sleep(0.5)
    assert site.stop() == 0
    assert task["status"] == "finished" and task["events_finished"] == 1000
    site.assert_exactly_once(task_id, 1000)
    outputs = site.outputs()
    assert len(outputs) == 1000 // 20
    for path, first, last in outputs[:: max(1, len(outputs) // 10)]:  # recompute a sample of ranges
        assert payloads.verify(str(path), task_id, first, last, {"size": 32, "rounds": 1})
    status = json.loads(site.cli("status", "--json").stdout)
    assert status["event_ranges"] == {"finished": 50} and status["jobs"] == {"finished": 1}


def test_failing_events_are_retried_up_to_the_limit_then_reported(make_site, tasks):
    site = make_site(queue=LOCAL_QUEUE)
    task = tasks.numpy(400, attempts=2)
    task["payload"] = {
        "kind": "python",
        "callable": "jumbo.payloads:fail",
        "args": {"fail_events": [5, 305], "code": 42, "then": "jumbo.payloads:simulate", "size": 32, "rounds": 1},
    }
    task_id = site.submit_task(**task)
    site.start()
    result = site.wait_task(task_id, timeout=120)
    site.stop()
    assert result["status"] == "failed"  # two ranges used up their attempts
    assert result["events_finished"] == 400 - 2 * 20
    with site.central_db() as conn:
        bad = conn.execute(
            "SELECT start_event, attempt_nr, status FROM ranges WHERE task_id = ? AND status != 3", (task_id,)
        ).fetchall()
    assert sorted(b[0] for b in bad) == [1, 301]
    assert all(attempt == 2 for _, attempt, _ in bad)  # tried twice, then given up
    errors = json.loads(site.cli("errors", "list", "--json").stdout)
    assert any(e.get("code") == 42 for e in errors)


def test_worker_killed_mid_run_hands_ranges_back(make_site, tasks):
    site = make_site(queue=LOCAL_QUEUE)
    task_id = site.submit_task(**tasks.sleep(600, 0.05, per_range=10))  # ~15 s of work per worker of 2 ranks
    site.start()

    def running_and_holding() -> bool:  # kill a worker in the middle of its work: it has ranges to hand back
        if site.task(task_id)["events_finished"] < 40:
            return False
        with site.harvester_db() as conn:
            return (
                conn.execute(
                    "SELECT count(*) FROM event_ranges e JOIN workers w ON e.worker_id = w.id "
                    "WHERE w.state = 'running' AND e.state = 'dispatched'"
                ).fetchone()[0]
                > 0
            )

    wait_for(running_and_holding, 120, "40 events finished and a running worker holding ranges")
    killed = site.cli("kill-workers", "--all").stdout
    assert "flagged" in killed and not killed.startswith("0 ")
    result = site.wait_task(task_id, timeout=180)
    # the last pilot hears "no more ranges" once its last report went out, so it ends a moment after the task
    site.wait_workers_ended()
    site.stop()
    assert result["status"] == "finished"
    site.assert_exactly_once(task_id, 600)
    with site.harvester_db() as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM workers GROUP BY state").fetchall())
        released = conn.execute("SELECT count(*) FROM event_ranges WHERE state = 'released'").fetchone()[0]
    assert states.get("cancelled", 0) >= 1 and states.get("finished", 0) >= 1
    assert released >= 1  # what the killed workers held went back to the central service


def test_central_service_outage_is_survived_through_the_outbox(make_site, tasks, tmp_path):
    import subprocess

    central_dir = tmp_path / "central"
    central_config, port = central_service_config(central_dir)
    central = serve_central(central_config)
    try:
        site = make_site(
            queue=LOCAL_QUEUE, central={"mode": "remote", "url": f"http://127.0.0.1:{port}", "trusted": True}
        )
        site.central_db = lambda: __import__("sqlite3").connect(f"file:{central_dir / 'central.db'}?mode=ro", uri=True)
        time.sleep(2)
        task_id = int(
            json.loads(
                subprocess.run(
                    [
                        *cli(central_config),
                        "task",
                        "submit",
                        _write_task(tmp_path, tasks.sleep(600, 0.03, per_range=10)),
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )["task_id"]
        )
        site.start()
        _wait_events(central_dir, task_id, 100, timeout=60)
        central.kill()  # the central service disappears mid-run
        central.wait(10)
        peak = 0
        for _ in range(16):
            time.sleep(0.5)
            with site.harvester_db() as conn:
                peak = max(peak, conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0])
        central = serve_central(central_config)  # back, on the same port and database
        deadline = time.monotonic() + 180
        while _task_row(central_dir, task_id)[0] != "finished":
            assert time.monotonic() < deadline, site.log_tail()
            time.sleep(1)
        site.stop()
        assert peak > 0  # reports were kept while the service was gone
        site.assert_exactly_once(task_id, 600)
        with site.harvester_db() as conn:
            assert conn.execute("SELECT count(*) FROM outbox WHERE state != 'sent'").fetchone()[0] == 0
    finally:
        central.kill()
        central.wait(10)


def _write_task(tmp_path, task: dict) -> str:
    import yaml

    path = tmp_path / "outage-task.yaml"
    path.write_text(yaml.safe_dump(task))
    return str(path)


def _task_row(central_dir, task_id: int) -> tuple:
    import sqlite3

    with sqlite3.connect(f"file:{central_dir / 'central.db'}?mode=ro", uri=True) as conn:
        status = conn.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()[0]
        done = conn.execute(
            "SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges WHERE task_id = ? AND status = 3",
            (task_id,),
        ).fetchone()[0]
    return status, done


def _wait_events(central_dir, task_id: int, events: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _task_row(central_dir, task_id)[1] < events:
        assert time.monotonic() < deadline, "the task made no progress"
        time.sleep(0.3)
