"""Steady work over virtual days (`simulate --days`): the sweeper forgets what ended more than keep_history ago, so
the bookkeeping DB stays bounded: rows per table within a limit derived from keep_history, the file not growing."""

from __future__ import annotations

import json

from click.testing import CliRunner

from harvester_edge.agents.sweeper import PRUNE_EVERY
from harvester_edge.replay.cli import simulate_command
from harvester_edge.replay.sim import DAY, steady_point
from harvester_edge.replay.synthetic import Behaviour

HOUR = 3600.0


def test_book_stays_bounded_by_keep_history_over_virtual_days(tmp_path):
    keep, every, per_job, days = 4 * HOUR, HOUR, 30, 3
    result = steady_point(
        days,
        tmp_path,
        Behaviour(queue_wait=30, fail_rate=0.05, kill_rate=0.05, seed=11),
        max_running=20,
        job_every=every,
        ranges_per_job=per_job,
        keep_history=keep,
    )
    jobs_total = int(days * DAY // every)
    assert result.ranges_done == result.ranges_total == jobs_total * per_job  # the work did get done
    per_day = result.row()["days"]
    assert [d["day"] for d in per_day] == list(range(1, len(per_day) + 1)) and len(per_day) >= days
    # what the book may hold: jobs that ended within keep_history (+ one pruning period, + their own run of up to
    # two arrivals) and the running ones; per job its ranges (and retried attempts), workers, messages, changes
    jobs_max = int((keep + PRUNE_EVERY + 2 * every) // every) + 2
    workers_per_job = result.workers / jobs_total
    limits = {
        "jobs": jobs_max,
        "event_ranges": jobs_max * per_job * 2,
        "workers": int(jobs_max * workers_per_job * 2),
        "outbox": jobs_max * (per_job * 2 + 1),
    }
    limits["job_workers"] = limits["workers"]
    limits["state_history"] = 4 * sum(limits.values())
    for d in per_day[1:]:  # from day 2 on: a full keep_history has passed
        for table, limit in limits.items():
            assert d["rows"][table] <= limit, (d["day"], table, d["rows"][table], limit)
    # rows were really deleted (the run made far more than the book holds) and the file does not grow
    assert per_day[-1]["rows"]["event_ranges"] * 4 < result.ranges_done
    assert per_day[-1]["rows"]["workers"] * 4 < result.workers
    assert per_day[-1]["db_mb"] <= 1.25 * per_day[1]["db_mb"], [d["db_mb"] for d in per_day]


def test_simulate_days_prints_a_row_per_day_and_json_last(tmp_path):
    out = CliRunner().invoke(
        simulate_command,
        [
            "--days",
            "1",
            "--job-every",
            "7200",
            "--ranges-per-job",
            "10",
            "--keep-history",
            "7200",
            "--max-running",
            "10",
            "--work-dir",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    last = json.loads(lines[-1])
    assert last["benchmark"] == "simulate-steady" and last["keep_history_s"] == 7200
    assert [d["day"] for d in last["per_day"]][:1] == [1]
    assert set(last["per_day"][0]["rows"]) >= {"jobs", "workers", "event_ranges", "outbox", "state_history"}
    assert last["run"]["ranges_done"] == 12 * 10
    assert lines[0].split()[:2] == ["day", "db_mb"]
