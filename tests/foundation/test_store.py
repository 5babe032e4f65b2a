"""Bookkeeping store: migrations, refusal of newer schemas, transitions, leases and their expiry."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from harvester_edge.errors import IllegalTransition, LeaseLost, StoreError
from harvester_edge.states import TERMINAL, TRANSITIONS, JobState, RangeState, WorkerState, check_transition
from harvester_edge.store import SchemaTooNew, claim, open_store, release, release_all, transition, update
from harvester_edge.store.schema import SCHEMA_VERSION

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path / "h.db")
    with store.write() as conn:
        conn.execute("INSERT INTO queues (name, batch, updated_at) VALUES ('q', 'local', 0)")
    yield store
    store.close()


def add_workers(store, n, state=WorkerState.NEW):
    with store.write() as conn:
        conn.executemany(
            "INSERT INTO workers (queue, state, job_name, access_point, nodes, ranks_per_node, walltime,"
            " created_at, updated_at) VALUES ('q', ?, ?, '/ap', 1, 1, 60, 0, 0)",
            [(state.value, f"job-{i}") for i in range(n)],
        )
    return [r[0] for r in store.query("SELECT id FROM workers ORDER BY id")]


def test_pragmas_and_version(store):
    conn = store.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000


def test_reopen_is_idempotent(tmp_path):
    open_store(tmp_path / "h.db").close()
    store = open_store(tmp_path / "h.db")
    assert store.query("SELECT count(*) FROM migrations")[0][0] == SCHEMA_VERSION


def test_newer_schema_refused(tmp_path):
    open_store(tmp_path / "h.db").close()
    conn = sqlite3.connect(tmp_path / "h.db")
    conn.execute("INSERT INTO migrations (name, applied_at) VALUES ('0099_from_the_future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer version.*Upgrade harvester-edge"):
        open_store(tmp_path / "h.db")


def test_not_a_database(tmp_path):
    (tmp_path / "h.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable harvester-edge database"):
        open_store(tmp_path / "h.db")


def test_network_fs_refused(tmp_path, monkeypatch):
    from harvester_edge.store import db

    monkeypatch.setattr(db, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(db.NetworkFileSystem, match="network file system"):
        open_store(tmp_path / "h.db", on_network_fs="refuse")
    open_store(tmp_path / "h2.db", on_network_fs="warn").close()


def test_every_state_machine_is_closed():
    for kind, table in TRANSITIONS.items():
        for src, dsts in table.items():
            assert src not in TERMINAL[kind]
            for dst in dsts:
                assert type(dst) is kind
                check_transition(src, dst)


@pytest.mark.parametrize(
    "src,dst",
    [
        (WorkerState.FINISHED, WorkerState.RUNNING),
        (WorkerState.RUNNING, WorkerState.NEW),
        (JobState.FINISHED, JobState.RUNNING),
        (RangeState.FINISHED, RangeState.DISPATCHED),
        (RangeState.FETCHED, RangeState.FINISHED),
        (WorkerState.NEW, JobState.RUNNING),
    ],
)
def test_illegal_transitions_raise(src, dst):
    with pytest.raises(IllegalTransition):
        check_transition(src, dst)


def test_transition_records_history(store):
    ids = add_workers(store, 3)
    with store.write() as conn:
        assert transition(conn, ids, WorkerState.NEW, WorkerState.SUBMITTING, now=NOW, reason="test") == 3
    assert {r[0] for r in store.query("SELECT state FROM workers")} == {"submitting"}
    history = store.query("SELECT object_id, src, dst, reason FROM state_history WHERE kind = 'workers'")
    assert sorted(int(r[0]) for r in history) == ids
    assert {(r[1], r[2], r[3]) for r in history} == {("new", "submitting", "test")}


def test_transition_is_all_or_nothing(store):
    ids = add_workers(store, 3)
    with store.write() as conn:
        transition(conn, ids[:1], WorkerState.NEW, WorkerState.SUBMITTING, now=NOW)
    with pytest.raises(IllegalTransition, match="is submitting"), store.write() as conn:
        transition(conn, ids, WorkerState.NEW, WorkerState.SUBMITTING, now=NOW)
    assert [r[0] for r in store.query("SELECT state FROM workers ORDER BY id")] == ["submitting", "new", "new"]


def test_transition_outside_transaction_refused(store):
    ids = add_workers(store, 1)
    with pytest.raises(StoreError, match="inside store.write"):
        transition(store.connection(), ids, WorkerState.NEW, WorkerState.SUBMITTING, now=NOW)


def test_claim_leases_and_expiry(store):
    add_workers(store, 10)
    with store.write() as conn:
        a = claim(conn, WorkerState, "a", states=[WorkerState.NEW], now=NOW, lease_time=60, limit=6)
        b = claim(conn, WorkerState, "b", states=[WorkerState.NEW], now=NOW, lease_time=60, limit=6)
    assert len(a) == 6 and len(b) == 4
    assert not {r["id"] for r in a} & {r["id"] for r in b}
    with store.write() as conn:  # nothing free until the leases expire
        assert claim(conn, WorkerState, "c", states=[WorkerState.NEW], now=NOW + 30, lease_time=60, limit=10) == []
        c = claim(conn, WorkerState, "c", states=[WorkerState.NEW], now=NOW + 61, lease_time=60, limit=10)
    assert len(c) == 10
    # a's lease expired and c holds the rows now: a's late change is refused and rolled back
    with pytest.raises(LeaseLost), store.write() as conn:
        transition(conn, [a[0]["id"]], WorkerState.NEW, WorkerState.SUBMITTING, now=NOW + 62, owner="a")
    with store.write() as conn:
        transition(conn, [a[0]["id"]], WorkerState.NEW, WorkerState.SUBMITTING, now=NOW + 62, owner="c")
        update(conn, "workers", "id", [{"id": a[0]["id"], "batch_id": "123"}], now=NOW + 62, owner="c")
        with pytest.raises(StoreError, match="transition"):
            update(conn, "workers", "id", [{"id": a[0]["id"], "state": "running"}], now=NOW + 62)


def test_release(store):
    add_workers(store, 4)
    with store.write() as conn:
        claim(conn, WorkerState, "host:1/submitter", states=[WorkerState.NEW], now=NOW, lease_time=60, limit=2)
        claim(conn, WorkerState, "host:1/monitor", states=[WorkerState.NEW], now=NOW, lease_time=60, limit=1)
        claim(conn, WorkerState, "host:2/monitor", states=[WorkerState.NEW], now=NOW, lease_time=60, limit=1)
        assert release(conn, WorkerState, "host:1/monitor") == 1
        assert release_all(conn, "host:1/") == 2
    held = store.query("SELECT lease_owner FROM workers WHERE lease_owner IS NOT NULL")
    assert [r[0] for r in held] == ["host:2/monitor"]


def test_concurrent_claims_never_overlap(store):
    add_workers(store, 400)
    got: dict[str, list[int]] = {}

    def agent(name):
        mine = []
        for _ in range(20):
            with store.write() as conn:  # claim, then act on the rows in the same transaction
                ids = [
                    r["id"]
                    for r in claim(conn, WorkerState, name, states=[WorkerState.NEW], now=NOW, lease_time=600, limit=7)
                ]
                transition(conn, ids, WorkerState.NEW, WorkerState.SUBMITTING, now=NOW, owner=name)
                mine += ids
        got[name] = mine

    threads = [threading.Thread(target=agent, args=(f"a{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in got.values() for i in ids]
    assert len(everything) == len(set(everything)) == 400


def test_nested_write_uses_savepoint(store):
    ids = add_workers(store, 2)
    with store.write() as conn:
        transition(conn, ids[:1], WorkerState.NEW, WorkerState.SUBMITTING, now=NOW)
        with pytest.raises(IllegalTransition), store.write() as inner:
            transition(inner, ids[1:], WorkerState.NEW, WorkerState.SUBMITTING, now=NOW)
            transition(inner, ids[1:], WorkerState.NEW, WorkerState.SUBMITTING, now=NOW)
    assert [r[0] for r in store.query("SELECT state FROM workers ORDER BY id")] == ["submitting", "new"]
