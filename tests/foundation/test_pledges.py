"""Pledges: core-hours of the last day and the cores a pledged queue may still start in a work shortage, read from a
real bookkeeping DB; the queue settings that declare brokerage and pledges."""

from __future__ import annotations

import pytest

from harvester_edge import pledges
from harvester_edge.config import QueueConfig
from harvester_edge.store import meta, open_store, queues

NOW = 1_000_000.0
HOUR = 3600.0


def queue(**over) -> QueueConfig:
    return QueueConfig(name=over.pop("name", "q"), batch="local", cores_per_node=4, **over)


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "h.db")
    yield store
    store.close()


def add_worker(conn, q: str, state: str, nodes: int, started: float | None, ended: float | None) -> None:
    conn.execute(
        "INSERT INTO workers (queue, state, job_name, access_point, nodes, ranks_per_node, walltime, started_at, "
        "ended_at, created_at, updated_at) VALUES (?, ?, ?, '', ?, 1, 3600, ?, ?, 0, ?)",
        (q, state, f"w{q}{state}{started}{nodes}", nodes, started, ended, ended or NOW),
    )


def test_core_hours_of_the_last_day_and_the_pledge(store):
    pledged, opp = queue(pledged_cores=8), queue(name="opp", opportunistic=True)
    with store.write() as conn:
        for q in (pledged, opp):
            queues.upsert(conn, q.name, q.batch, NOW)
            queues.set_pledge(conn, q.name, q.cores_per_node, q.pledged_cores, q.opportunistic)
        add_worker(conn, "q", "running", 1, NOW - 2 * HOUR, None)  # 2 h x 4 cores, still running
        add_worker(conn, "q", "finished", 2, NOW - 30 * HOUR, NOW - 23 * HOUR)  # 1 h of it in the last day, 8 cores
        add_worker(conn, "q", "finished", 1, NOW - 50 * HOUR, NOW - 40 * HOUR)  # before the last day
        add_worker(conn, "q", "queued", 1, None, None)
        add_worker(conn, "opp", "finished", 1, NOW - HOUR, NOW - 0.5 * HOUR)
        meta.set_work_shortage(conn, True, NOW - 5)
    conn = store.connection()
    usage = pledges.usage(conn, pledges.facts_of_db(conn), NOW)
    assert usage["work_shortage"] is True and usage["work_shortage_checked"] == NOW - 5
    o, q = usage["queues"]  # by name
    assert (o["queue"], o["opportunistic"], o["core_hours_24h"], o["cores_running"]) == ("opp", True, 2.0, 0)
    assert q["cores_running"] == 4 and q["cores_waiting"] == 4
    assert q["core_hours_24h"] == pytest.approx(2 * 4 + 1 * 8)
    assert q["pledged_core_hours_24h"] == 8 * 24 and q["pledge_used_pct"] == pytest.approx(100 * 16 / 192, abs=0.1)
    # in a shortage the pledged queue may start 8 - (1 running + 1 queued) x 4 = 0 more cores; without: no limit
    assert pledges.cores_budget(conn, pledged, True) == 0
    assert pledges.cores_budget(conn, pledged, False) is None
    assert pledges.cores_budget(conn, queue(pledged_cores=20), True) == 12


def test_queue_brokerage_settings():
    assert queue().brokerage == {}  # no rank memory declared: the request says nothing (any job fits)
    assert queue(ranks_per_node=2, rank_memory_max_mb=2000).brokerage == {
        "memory": 2000,
        "memory_min": 0,
        "core_count": 2,
    }
    assert queue(rank_memory_min_mb=4000).brokerage == {"memory_min": 4000, "core_count": 4}
    with pytest.raises(ValueError, match="rank_memory_min_mb"):
        queue(rank_memory_min_mb=4000, rank_memory_max_mb=2000)
