"""The task/errors/central click groups, invoked with CliRunner on a central DB in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner

from harvester_edge.central.cli import central_group, errors_group, task_group
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings

from .conftest import db_settings

EXAMPLE = Path(__file__).parents[2] / "configs" / "tasks" / "example.yaml"


def obj(tmp_path, central_db=None, **over):
    db = tmp_path / "central.db" if central_db is None else central_db
    central = db_settings(db, tmp_path, **over)
    return SimpleNamespace(config=SimpleNamespace(central=central, paths=SimpleNamespace(work_dir=tmp_path)))


def run(group, args, o):
    result = CliRunner().invoke(group, args, obj=o, catch_exceptions=False)
    return result


def test_task_commands(tmp_path, central_db):
    o = obj(tmp_path, central_db)
    out = run(task_group, ["submit", str(EXAMPLE), "--json"], o)
    assert out.exit_code == 0, out.output
    task_id = json.loads(out.output)["task_id"]
    listed = json.loads(run(task_group, ["list", "--json"], o).output)
    assert [(t["task_id"], t["status"], t["ranges"]) for t in listed] == [(task_id, "defined", {"ready": 200})]
    table = run(task_group, ["list"], o).output
    assert "example-numpy-sim" in table and "defined" in table
    assert "activated" in run(task_group, ["show", str(task_id)], o).output
    assert run(task_group, ["kill", str(task_id)], o).output.strip() == f"task {task_id}: aborted"
    again = run(task_group, ["kill", str(task_id)], o)
    assert again.exit_code != 0 and "only defined or running" in again.output
    assert run(task_group, ["retry", str(task_id)], o).output.strip() == f"task {task_id}: running"
    missing = run(task_group, ["show", "99"], o)
    assert missing.exit_code != 0 and "task 99 does not exist" in missing.output


def test_bad_task_file_is_a_clear_error(tmp_path):  # SQLite only: that no DB file is made for a bad task file
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nevents: ten\n")
    out = run(task_group, ["submit", str(bad)], obj(tmp_path))
    assert out.exit_code != 0
    assert str(bad) in out.output and "events" in out.output and "payload" in out.output
    assert not (tmp_path / "central.db").exists()


def test_errors_commands(tmp_path, central_db):
    o = obj(tmp_path, central_db)
    svc = CentralService.open(central_db, db_settings(central_db, tmp_path))
    task_id = svc.submit_task(
        {
            "name": "e",
            "payload": {"kind": "command", "template": "run {first_event}"},
            "events": 5,
            "events_per_range": 5,
            "seconds_per_event": 1,
        }
    )
    job = svc.acquire_jobs("S")[0]["PandaID"]
    r = svc.acquire_event_ranges(job, task_id, 1)[0]
    svc.update_event_ranges(
        [
            {
                "eventRangeID": r["eventRangeID"],
                "eventStatus": "failed",
                "errorCode": 1151,
                "errorDiag": "stage-in timeout",
            }
        ]
    )
    svc.close()
    suggested = json.loads(run(errors_group, ["suggested", "--json"], o).output)
    assert [(e["source"], e["code"], e["status"]) for e in suggested] == [("event", 1151, "suggested")]
    out = run(errors_group, ["promote", str(suggested[0]["id"]), "--class", "system"], o)
    assert "confirmed as system" in out.output
    assert json.loads(run(errors_group, ["suggested", "--json"], o).output) == []
    assert "1151" in run(errors_group, ["list"], o).output


def test_issue_token(tmp_path, central_db):
    out = run(central_group, ["issue-token", "pilot-1", "--json"], obj(tmp_path, central_db))
    creds = json.loads(out.output)
    assert creds["token"].count(".") == 2 and len(creds["key"]) > 20
    assert (tmp_path / "central.secret").stat().st_mode & 0o777 == 0o600
