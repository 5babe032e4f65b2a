"""`harvester-edge status` before and after a run; the log file survives logrotate; JSON log lines."""

from __future__ import annotations

import json
import signal


def test_status_on_a_fresh_work_dir_reports_no_db_and_creates_none(make_site):
    site = make_site()
    text = site.cli("status")
    assert "site t" in text.stdout and "no bookkeeping database yet" in text.stdout
    assert "queues" in text.stdout and "q" in text.stdout

    snapshot = json.loads(site.cli("status", "--json").stdout)
    assert snapshot["site"] == "t" and snapshot["note"].startswith("no bookkeeping database yet")
    assert snapshot["queues"] == [{"name": "q", "batch": "local", "draining": False, "workers": {}}]
    assert snapshot["jobs"] == snapshot["workers"] == snapshot["event_ranges"] == {}
    assert not (site.work / "harvester.db").exists()  # status only reads


def test_status_after_a_run_reads_the_db_the_daemon_left(make_site):
    site = make_site()
    ran = site.cli("run", "--for", "3", timeout=60)
    assert ran.returncode == 0
    site.cli("drain", "-q", "q")  # an operator flag status must show

    snapshot = json.loads(site.cli("status", "--json").stdout)
    assert "note" not in snapshot
    assert snapshot["db"] == str(site.work / "harvester.db")
    assert snapshot["queues"] == [{"name": "q", "batch": "local", "draining": True, "workers": {}}]
    assert snapshot["outbox_pending"] == 0
    text = site.cli("status").stdout
    assert "no bookkeeping database yet" not in text
    for title in ("queues", "jobs", "workers", "event ranges", "outbox: 0 messages"):
        assert title in text, text
    assert "yes" in text  # the draining column of queue q


def test_log_file_is_reopened_after_logrotate_renames_it(make_site):
    site = make_site()
    daemon = site.start_run()
    site.wait_log(r"daemon \S+ started for site t")
    rotated = site.log_path.with_name("harvester-edge.log.1")
    site.log_path.rename(rotated)  # what logrotate does (without copytruncate)
    assert not site.log_path.exists()

    daemon.send_signal(signal.SIGHUP)  # any line after the rename will do: the reload logs one
    site.wait_log(r"SIGHUP: reloaded")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(25) == 0
    new, old = site.log_text(), rotated.read_text()
    assert "SIGHUP: reloaded" in new and "harvester_edge.daemon: stopped" in new
    assert "started for site t" in old and "SIGHUP: reloaded" not in old  # nothing more went to the renamed file


def test_log_json_writes_one_json_object_per_line(make_site):
    site = make_site(daemon={"stop_timeout": "10s", "lease_time": "30s", "log_json": True})
    assert site.cli("run", "--for", "2", timeout=60).returncode == 0
    lines = site.log_text().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]  # every line parses on its own
    for entry in entries:
        assert {"time", "level", "thread", "logger", "message"} <= entry.keys()
        assert entry["time"].endswith("Z")
    messages = [e["message"] for e in entries if e["logger"] == "harvester_edge.daemon"]
    assert any(m.startswith("daemon ") and "started for site t" in m for m in messages)
    assert messages[-1] == "stopped"
