"""SIGTERM drains within daemon.stop_timeout and releases every lease; SIGHUP reloads, and keeps the old config
when the new one is bad."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

STOP_MARGIN = 15  # seconds on top of daemon.stop_timeout for interpreter exit on a busy 2-core machine


def wait_progress(site, task_id: int, events: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while site.events_finished(task_id) < events:
        assert site.popen.poll() is None, site.log_tail()
        assert time.monotonic() < deadline, f"task {task_id} made no progress:\n{site.log_tail()}"
        time.sleep(0.1)


@pytest.mark.mpi  # real local MPI workers
def test_sigterm_drains_in_time_releases_leases_and_a_restart_finishes_the_task(make_site, tasks):
    site = make_site()
    stop_timeout = 10
    task_id = site.task_submit(tasks.sleep(1200, 0.03))  # ~9 s on 2 workers of 2 ranks
    daemon = site.start_run()
    site.wait_log(r"daemon \S+ started for site t")
    wait_progress(site, task_id, 40)  # a worker runs and ranges flow: the agents are mid-work

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(stop_timeout + STOP_MARGIN) == 0
    log = site.log_text()
    assert "stopping: no new cycles" in log and "harvester_edge.daemon: stopped" in log
    assert "cycles still running" not in log  # every running cycle finished inside the bound
    assert site.held_leases() == {"workers": 0, "jobs": 0, "event_ranges": 0}
    site.assert_consistent()
    assert site.task_status(task_id) != "finished"  # the stop came mid-task

    # the drained state is one a new daemon picks up: the task ends with every event finished once
    site.start_run()
    task = site.wait_task(task_id, timeout=120)
    assert site.popen.poll() is None
    site.popen.send_signal(signal.SIGTERM)
    assert site.popen.wait(stop_timeout + STOP_MARGIN) == 0
    assert task["status"] == "finished" and task["events_finished"] == 1200
    site.assert_exactly_once(task_id, 1200)
    assert site.held_leases() == {"workers": 0, "jobs": 0, "event_ranges": 0}


def test_sigterm_exit_is_bounded_by_stop_timeout_when_a_cycle_hangs(make_site, black_hole):
    """The fetcher's call to a central service that never answers lasts request_timeout (120 s); SIGTERM must
    still end the process after stop_timeout (2 s), with exit code 1 and a log line saying cycles were cut."""
    site = make_site(
        central={
            "mode": "remote",
            "url": f"http://127.0.0.1:{black_hole.port}",
            "trusted": True,
            "request_timeout": "120s",
        },
        daemon={"stop_timeout": "2s", "lease_time": "30s"},
    )
    daemon = site.start_run()
    site.wait_log(r"daemon \S+ started for site t")
    assert black_hole.requests.wait(30), "the fetcher never called the central service"
    time.sleep(0.5)

    daemon.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:  # the hanging request (request_timeout 120 s) must not decide when the process ends
        code = daemon.wait(2 + STOP_MARGIN)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"SIGTERM did not end the daemon within stop_timeout + {STOP_MARGIN}s "
            f"({time.monotonic() - started:.0f}s so far):\n{site.log_tail()}"
        )
    assert code == 1
    log = site.log_text()
    assert "stopping: cycles still running after 2s" in log and "harvester_edge.daemon: stopped" in log


def test_sighup_reloads_and_a_bad_config_is_rejected_while_the_old_one_stays(make_site):
    site = make_site()
    daemon = site.start_run()
    site.wait_log(r"daemon \S+ started for site t")

    good = site.read_config()
    good["agents"]["fetcher"] = "3s"
    good["queues"].append({"name": "extra", "batch": "local"})
    site.write_config(good)
    daemon.send_signal(signal.SIGHUP)
    site.wait_log(r"SIGHUP: reloaded .* \(2 queues\)")
    with site.harvester_db() as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM queues")} == {"q", "extra"}
    good_copy = site.write_config(good, site.root / "good.yaml")

    broken = dict(good, daemn={"stop_timeout": "5s"})  # a typo of a top-level key
    site.write_config(broken)
    daemon.send_signal(signal.SIGHUP)
    site.wait_log(r"SIGHUP: the new config is rejected, keeping the old one")
    assert "unknown key 'daemn'" in site.log_text() and "did you mean" in site.log_text().split("rejected")[-1]
    time.sleep(1)
    assert daemon.poll() is None  # still running
    status = json.loads(site.cli("status", "--json", config=good_copy).stdout)
    assert [q["name"] for q in status["queues"]] == ["q", "extra"] and "note" not in status

    moved = dict(
        good,
        paths={**good["paths"], "db": str(site.root / "elsewhere.db")},
        queues=[*good["queues"], {"name": "never", "batch": "local"}],
    )
    site.write_config(moved)
    daemon.send_signal(signal.SIGHUP)
    site.wait_log(r"SIGHUP: paths changed .*keeping the old config")

    # the daemon still acts on SIGHUP with the config it kept: a valid file is taken again
    good["queues"].append({"name": "third", "batch": "local"})
    site.write_config(good)
    daemon.send_signal(signal.SIGHUP)
    site.wait_log(r"SIGHUP: reloaded .* \(3 queues\)")
    with site.harvester_db() as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM queues")} == {"q", "extra", "third"}
    assert not (site.root / "elsewhere.db").exists()

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10 + STOP_MARGIN) == 0
