"""The sweeper forgets what ended more than daemon.keep_history ago, on a real SQLite file."""

from __future__ import annotations

import yaml

from harvester_edge.agents.base import AgentContext
from harvester_edge.agents.sweeper import Sweeper
from harvester_edge.config import load_config
from harvester_edge.seams.clock import Clock
from harvester_edge.store import open_store

DAY = 86400.0
NOW = 1_800_000_000.0


def make_sweeper(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site": "s",
                "queues": [{"name": "q", "batch": "local"}],
                "paths": {"work_dir": str(tmp_path / "work")},
                "daemon": {"keep_history": "7d"},
            }
        )
    )
    config = load_config(path)
    store = open_store(config.db_path)
    with store.write() as conn:
        conn.execute("INSERT INTO queues (name, batch, updated_at) VALUES ('q', 'local', 0)")
    ctx = AgentContext(config=config, store=store, clock=Clock(), daemon_id="test:1")
    return Sweeper(ctx), store


def add_job(conn, panda_id, state, ended, workers):
    """A job that ended at `ended` with workers [(id, state, cleaned)] and 3 ranges on its first worker."""
    conn.execute(
        "INSERT INTO jobs (panda_id, task_id, queue, state, spec, created_at, updated_at) "
        "VALUES (?, 1, 'q', ?, '{}', ?, ?)",
        (panda_id, state, ended - DAY, ended),
    )
    for wid, wstate, cleaned in workers:
        conn.execute(
            "INSERT OR IGNORE INTO workers (id, queue, state, job_name, access_point, nodes, ranks_per_node,"
            " walltime, cleaned_at, created_at, updated_at) VALUES (?, 'q', ?, ?, '/ap', 1, 1, 60, ?, ?, ?)",
            (wid, wstate, f"w{wid}", ended if cleaned else None, ended - DAY, ended),
        )
        conn.execute("INSERT INTO job_workers (panda_id, worker_id) VALUES (?, ?)", (panda_id, wid))
    for i in range(3):
        conn.execute(
            "INSERT INTO event_ranges (range_id, panda_id, worker_id, state, first_event, last_event, spec,"
            " updated_at) VALUES (?, ?, ?, 'finished', ?, ?, '{}', ?)",
            (f"{panda_id}-{i}", panda_id, workers[0][0] if workers else None, i, i, ended),
        )


def counts(store):
    return {
        t: store.query(f"SELECT count(*) FROM {t}")[0][0]
        for t in ("jobs", "workers", "job_workers", "event_ranges", "outbox", "state_history")
    }


def test_old_ended_jobs_go_with_their_workers_and_ranges_recent_ones_stay(tmp_path):
    sweeper, store = make_sweeper(tmp_path)
    with store.write() as conn:
        add_job(conn, 1, "finished", NOW - 8 * DAY, [(1, "finished", True), (2, "failed", True)])  # goes
        add_job(conn, 2, "finished", NOW - 1 * DAY, [(3, "finished", True)])  # too recent
        add_job(conn, 3, "failed", NOW - 9 * DAY, [(4, "finished", False)])  # access point not cleaned yet
        add_job(conn, 4, "running", NOW - 9 * DAY, [(5, "running", False)])  # still running
        add_job(conn, 5, "cancelled", NOW - 9 * DAY, [(6, "cancelled", True)])  # worker 6 also serves job 6
        add_job(conn, 6, "running", NOW - 9 * DAY, [(6, "cancelled", True)])
        conn.executemany(
            "INSERT INTO state_history (kind, object_id, src, dst, at) VALUES ('job', '1', 'a', 'b', ?)",
            [(NOW - 8 * DAY,), (NOW - 8 * DAY,), (NOW - DAY,)],
        )
        conn.executemany(
            "INSERT INTO outbox (kind, state, payload, created_at, updated_at) VALUES (?, ?, '{}', ?, ?)",
            [
                ("update_jobs", "sent", NOW - 8 * DAY, NOW - 8 * DAY),
                ("update_jobs", "rejected", NOW - 8 * DAY, NOW - 8 * DAY),  # kept for the operator
                ("update_jobs", "sent", NOW - DAY, NOW - DAY),
            ],
        )
    before = counts(store)
    sweeper.prune(NOW)
    after = counts(store)
    assert [r[0] for r in store.query("SELECT panda_id FROM jobs ORDER BY 1")] == [2, 3, 4, 6]
    assert [r[0] for r in store.query("SELECT id FROM workers ORDER BY 1")] == [3, 4, 5, 6]
    assert before["event_ranges"] - after["event_ranges"] == 6  # jobs 1 and 5
    assert (after["state_history"], after["outbox"]) == (1, 2)
    assert store.query("PRAGMA foreign_key_check") == []
    with store.write() as conn:
        conn.execute(
            "INSERT INTO outbox (kind, state, payload, created_at, updated_at) "
            "VALUES ('update_jobs', 'sent', '{}', ?, ?)",
            (NOW - 8 * DAY, NOW - 8 * DAY),
        )
    sweeper.prune(NOW + 1)  # the last pass found less than its limits: the next one comes an hour later
    assert counts(store)["outbox"] == after["outbox"] + 1
    sweeper.prune(NOW + 3601)
    assert counts(store) == after


def test_nothing_is_pruned_while_a_message_waits_for_the_central_service(tmp_path):
    sweeper, store = make_sweeper(tmp_path)
    with store.write() as conn:
        add_job(conn, 1, "finished", NOW - 8 * DAY, [(1, "finished", True)])
        conn.execute(
            "INSERT INTO outbox (kind, state, payload, created_at, updated_at) "
            "VALUES ('update_event_ranges', 'pending', '{}', ?, ?)",
            (NOW - 8 * DAY, NOW - 8 * DAY),
        )
    before = counts(store)
    sweeper.prune(NOW)
    assert counts(store) == before
    with store.write() as conn:
        conn.execute("UPDATE outbox SET state = 'sent'")
    sweeper.prune(NOW)
    assert counts(store)["jobs"] == 0 and counts(store)["outbox"] == 0
