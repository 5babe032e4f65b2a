"""CLI views over the seeded DBs: status (BPS-style per-task table, --watch), worker show, errors summary."""

from __future__ import annotations

import json

import click
import pytest
import yaml
from click.testing import CliRunner

from harvester_edge.cli import CliContext
from harvester_edge.cli_views import errors_summary, status_cmd, task_rows, worker_group
from helpers import local_queue

QUEUE = local_queue(max_queued_workers=2, max_running_workers=4)  # the config defaults


@pytest.fixture
def run(seeded, tmp_path):
    config = tmp_path / "site.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "site": "t",
                "central": {"mode": "embedded", "trusted": True},
                "queues": [QUEUE],
                "paths": {"work_dir": str(seeded["work"])},
            }
        )
    )

    @click.group()
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        ctx.obj = CliContext(config)

    cli.add_command(status_cmd)
    cli.add_command(worker_group)
    cli.add_command(errors_summary)

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    invoke.cli = cli
    return invoke


def test_task_rows_roll_range_states_up_like_bps():
    rows = task_rows(
        [
            {
                "task_id": 3,
                "name": "n",
                "status": "running",
                "n_events": 200,
                "events_finished": 50,
                "ranges": {"ready": 4, "sent": 1, "running": 2, "finished": 5, "fatal": 1, "failed": 2},
            }
        ]
    )
    assert rows == [
        {
            "task_id": 3,
            "name": "n",
            "status": "running",
            "pending": 4,
            "running": 3,
            "succeeded": 5,
            "failed": 3,
            "cancelled": 0,
            "total": 15,
            "events_done": 50,
            "events": 200,
            "percent": 25.0,
        }
    ]


def test_status_shows_a_row_per_task_and_json(run, seeded):
    out = run("status")
    line = next(ln for ln in out.splitlines() if "seeded" in ln)
    assert [c.strip() for c in line.strip("│ ").split("│")][:9] == [
        str(seeded["task_id"]),
        "seeded",
        "running",
        "5",
        "2",
        "3",
        "0",
        "0",
        "10",
    ]
    data = json.loads(run("status", "--json"))
    assert data["task_rows"][0]["succeeded"] == 3 and data["workers"] == {"finished": 1}


def test_status_watch_redraws_until_stopped(run, monkeypatch):
    import harvester_edge.cli_views as views

    drawn = []  # a non-terminal console shows only the last frame: count the frames built instead
    real = views.status_renderable
    monkeypatch.setattr(views, "status_renderable", lambda snapshot: drawn.append(snapshot) or real(snapshot))
    out = run("status", "--watch", "--interval", "0.01", "--iterations", "3")
    assert len(drawn) == 1 + 3  # the first frame, then one redraw per iteration
    assert len({id(snapshot) for snapshot in drawn}) == 4  # each from a snapshot of its own (read again)
    assert out.count("Ctrl-C to stop") == 1 and "seeded" in out


def test_worker_show_table_and_json(run, seeded):
    out = run("worker", "show", "1")
    assert "local:4242" in out and "running" in out and "worker.sh" in out and "logs/payload.0.log" in out
    data = json.loads(run("worker", "show", "1", "--json"))
    assert data["jobs"] == [seeded["panda_id"]] and [h["dst"] for h in data["state_history"]] == [
        "submitting",
        "queued",
        "running",
        "finished",
    ]
    result = CliRunner().invoke(run.cli, ["worker", "show", "9"])
    assert result.exit_code != 0 and "worker 9 is not in" in result.output


def test_errors_summary_groups_by_source_code_message(run, seeded):
    data = json.loads(run("summary", "--json"))
    assert {
        "source": "event",
        "code": 65,
        "message": "payload crashed",
        "count": 2,
        "tasks": str(seeded["task_id"]),
    } in data
    assert "payload crashed" in run("summary")
