"""`harvester-edge errors summary` and `harvester-edge report` read the central DB the site's config names: the
SQLite file of the embedded service or a PostgreSQL central.db (through the store layer, as the service reads it)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from harvester_edge.central.service import CentralService
from helpers import local_queue

from .conftest import db_settings, task_dict


def _site(tmp_path: Path, central_db: Path | str) -> Path:
    config = tmp_path / "site.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "site": "views",
                "central": {"mode": "embedded", "db": str(central_db)},
                "paths": {"work_dir": str(tmp_path / "work")},
                "queues": [local_queue()],
            }
        )
    )
    return config


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harvester_edge", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _failed_range(central_db: Path | str, tmp_path: Path) -> int:
    """A task whose job failed one range with code 65 'payload crashed' and finished another."""
    service = CentralService.open(central_db, db_settings(central_db, tmp_path))
    try:
        task_id = service.submit_task(task_dict(name="views-task", events=40, max_attempts=3))
        job = service.acquire_jobs("SITE")[0]["PandaID"]
        first, second = service.acquire_event_ranges(job, task_id, 2)
        service.update_event_ranges(
            [
                {
                    "eventRangeID": first["eventRangeID"],
                    "eventStatus": "failed",
                    "errorCode": 65,
                    "errorDiag": "payload crashed",
                },
                {"eventRangeID": second["eventRangeID"], "eventStatus": "finished"},
            ]
        )
    finally:
        service.close()
    return task_id


def test_errors_summary_and_report_read_the_configured_central_db(backend, central_db, tmp_path):
    task_id = _failed_range(central_db, tmp_path)
    config = _site(tmp_path, central_db)
    summary = _cli(config, "errors", "summary", "--json")
    assert summary.returncode == 0, summary.stderr
    groups = json.loads(summary.stdout)
    assert {"source": "event", "code": 65, "message": "payload crashed", "count": 1, "tasks": str(task_id)} in groups
    assert "payload crashed" in _cli(config, "errors", "summary").stdout
    out = tmp_path / "report.html"
    report = _cli(config, "report", "--task", str(task_id), "--out", str(out))
    assert report.returncode == 0, report.stderr
    html = out.read_text()
    assert "views-task" in html and "payload crashed" in html
    missing = _cli(config, "report", "--task", str(task_id + 999), "--out", str(tmp_path / "x.html"))
    assert missing.returncode != 0 and str(task_id + 999) in missing.stderr and not (tmp_path / "x.html").exists()


def test_errors_summary_on_an_unreachable_postgresql_is_one_clear_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _site(tmp_path, f"postgresql://nobody:secret@127.0.0.1:{port}/central")
    done = _cli(config, "errors", "summary")
    assert done.returncode != 0
    assert "cannot connect to PostgreSQL" in done.stderr and "secret" not in done.stderr
    assert "Traceback" not in done.stderr
