"""The task/errors/central click groups, invoked with CliRunner on a central DB in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner

from harvester_edge.central.cli import central_group, errors_group, task_group
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings

from .conftest import db_settings, task_dict

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


def test_errors_suggest_add_edit_delete_history(tmp_path):
    o = obj(tmp_path)
    svc = CentralService.open(tmp_path / "central.db")
    svc.submit_task(
        {
            "name": "f",
            "payload": {"kind": "command", "template": "run"},
            "events": 5,
            "events_per_range": 5,
            "seconds_per_event": 1,
        }
    )
    job = svc.acquire_jobs("S")[0]["PandaID"]
    svc.update_job(job, "failed", {"exeErrorCode": 137, "exeErrorDiag": "payload killed after 3600 s"})
    svc.close()
    shown = run(errors_group, ["suggest", "--job", str(job)], o)
    assert shown.exit_code == 0, shown.output
    assert "exe 137" in shown.output and "harvester-edge errors add --source exe --code 137" in shown.output
    added = json.loads(
        run(errors_group, ["suggest", "--job", str(job), "--add", "--class", "fatal", "--json"], o).output
    )
    assert (added["source"], added["code"], added["class"]) == ("exe", 137, "fatal")
    assert added["diag_pattern"] == "payload\\ killed\\ after\\ [0-9]+\\ s"
    rule_id = added["id"]
    out = run(errors_group, ["edit", str(rule_id), "--class", "user", "--pattern", "killed"], o)
    assert out.exit_code == 0 and f"rule {rule_id}: exe 137 'killed' -> user (confirmed)" in out.output
    bad = run(errors_group, ["edit", str(rule_id), "--pattern", "("], o)
    assert bad.exit_code != 0 and "not a valid regular expression" in bad.output
    out = run(errors_group, ["add", "--source", "pilot", "--code", "1099", "--class", "system"], o)
    assert out.exit_code == 0 and "pilot 1099 '' -> system (confirmed)" in out.output
    assert run(errors_group, ["delete", str(rule_id)], o).exit_code == 0
    missing = run(errors_group, ["delete", str(rule_id)], o)
    assert missing.exit_code != 0 and "does not exist" in missing.output
    history = json.loads(run(errors_group, ["history", "--rule", str(rule_id), "--json"], o).output)
    assert [h["action"] for h in history] == ["delete", "edit", "add"]
    assert all(h["who"].endswith("(cli)") and h["at"] > 0 for h in history)
    assert "delete" in run(errors_group, ["history"], o).output


def test_task_set_priority_and_share(tmp_path):
    o = obj(tmp_path)
    task_id = json.loads(run(task_group, ["submit", str(EXAMPLE), "--json"], o).output)["task_id"]
    out = run(task_group, ["set", str(task_id), "--priority", "50", "--share", "0.3"], o)
    assert out.output.strip() == f"task {task_id}: priority 50, share 0.3"
    assert json.loads(run(task_group, ["show", str(task_id), "--json"], o).output)["priority"] == 50
    out = run(task_group, ["set", str(task_id), "--share", "none", "--json"], o)
    assert json.loads(out.output) == {"task_id": task_id, "priority": 50, "share": None}
    for bad in (["--share", "2"], ["--share", "lots"], ["--priority", "9999999"], []):
        assert run(task_group, ["set", str(task_id), *bad], o).exit_code != 0


def test_errors_and_task_set_in_remote_mode(tmp_path, trusted_central):
    """The same commands over /api/v1 (central.mode remote): the service records the change."""
    o = obj(tmp_path, mode="remote", url=trusted_central.url)
    task_id = trusted_central.service.submit_task(task_dict())
    out = run(task_group, ["set", str(task_id), "--priority", "9", "--share", "0.5"], o)
    assert out.exit_code == 0 and out.output.strip() == f"task {task_id}: priority 9, share 0.5"
    assert trusted_central.service.show_task(task_id)["priority"] == 9
    out = run(errors_group, ["add", "--source", "exe", "--code", "3", "--class", "user", "--status", "suggested"], o)
    assert out.exit_code == 0, out.output
    rule_id = next(r["id"] for r in trusted_central.service.list_errors() if (r["source"], r["code"]) == ("exe", 3))
    assert [r["id"] for r in json.loads(run(errors_group, ["suggested", "--json"], o).output)] == [rule_id]
    assert "confirmed as fatal" in run(errors_group, ["promote", str(rule_id), "--class", "fatal"], o).output
    assert run(errors_group, ["delete", str(rule_id)], o).exit_code == 0
    history = json.loads(run(errors_group, ["history", "--json"], o).output)
    assert [(h["action"], h["who"]) for h in history] == [
        ("delete", "trusted"),
        ("edit", "trusted"),
        ("add", "trusted"),
    ]
