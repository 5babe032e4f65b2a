"""Per-cycle queries read the few live or recent rows, never the ever-growing history (issue 15: flat cost)."""

from __future__ import annotations

import pytest

from harvester_edge.store import jobs, open_store
from harvester_edge.store import workers as worker_rows

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "h.db")
    with store.write() as conn:
        conn.execute("INSERT INTO queues (name, batch, updated_at) VALUES ('q', 'local', 0), ('r', 'local', 0)")
    yield store
    store.close()


def add_worker(conn, queue: str, state: str, error: str | None, updated_at: float) -> None:
    conn.execute(
        "INSERT INTO workers (queue, state, job_name, access_point, nodes, ranks_per_node, walltime, error,"
        " created_at, updated_at) VALUES (?, ?, ?, '/ap', 1, 1, 60, ?, 0, ?)",
        (queue, state, f"job-{queue}-{state}-{updated_at}-{error}", error, updated_at),
    )


def test_recent_failures_counts_only_the_queues_recent_refusals(store):
    with store.write() as conn:
        add_worker(conn, "q", "failed", "sbatch: invalid account", NOW - 10)  # counted
        add_worker(conn, "q", "failed", "sbatch: invalid account", NOW - 20)  # counted
        add_worker(conn, "q", "failed", "sbatch: invalid account", NOW - 700)  # too old
        add_worker(conn, "q", "failed", None, NOW - 10)  # failed in the batch system, not a refusal
        add_worker(conn, "q", "finished", "x", NOW - 10)  # not failed
        add_worker(conn, "r", "failed", "x", NOW - 10)  # another queue
    assert worker_rows.recent_failures(store.connection(), "q", NOW - 600) == 2
    assert worker_rows.recent_failures(store.connection(), "r", NOW - 600) == 1


def test_recent_failures_reads_the_failed_workers_index(store):
    plan = " ".join(
        r[3]
        for r in store.connection().execute(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM workers WHERE queue = ? AND state = 'failed' "
            "AND error IS NOT NULL AND updated_at > ?",
            ("q", NOW),
        )
    )
    assert "workers_failed (queue=? AND updated_at>?)" in plan


def test_reopen_for_ranges_starts_from_the_live_workers(store):
    conn = store.connection()
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    with store.write() as c:
        jobs.reopen_for_ranges(c, ["77-1-1-0"], NOW)
    conn.set_trace_callback(None)
    sql = next(s for s in seen if s.startswith("UPDATE jobs"))
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    assert any("workers_state" in step for step in plan), plan
    assert not any("job_workers USING PRIMARY KEY (panda_id=?)" in step for step in plan), plan
