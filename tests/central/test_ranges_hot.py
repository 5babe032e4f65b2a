"""The ready-range index keyed on "no holder" (issue 16 item 5): a finish is a HOT update on PostgreSQL, and a
database made with the first index (ranges_ready, WHERE status = 0) is upgraded by the service's own migration."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner

from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.cli import central_group

from .conftest import db_rows, db_settings, task_dict


def obj(settings: CentralSettings) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(central=settings))


def run_sql(central_db: Path | str, *statements: str) -> None:
    """Statements run straight on either backend (autocommit), as an older version of the schema would be."""
    if isinstance(central_db, Path):
        conn = sqlite3.connect(str(central_db))
        try:
            for sql in statements:
                conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(central_db, autocommit=True) as pg:
        for sql in statements:
            pg.execute(sql)  # type: ignore[arg-type]


def index_names(central_db: Path | str) -> set[str]:
    if isinstance(central_db, Path):
        return {r[0] for r in db_rows(central_db, "SELECT name FROM sqlite_master WHERE type='index'")}
    return {r[0] for r in db_rows(central_db, "SELECT indexname FROM pg_indexes WHERE schemaname=current_schema()")}


def test_a_database_with_the_first_ready_index_is_upgraded(central_db, tmp_path):
    """ranges_ready (WHERE status = 0) and a ready range that still names a job, as an older DB may hold: `central
    db migrate` drops the old index, clears the stale holder (so the new index finds the range) and, on
    PostgreSQL, sets the ranges table's fillfactor; the range is then claimed as any ready range."""
    settings = db_settings(central_db, tmp_path, heartbeat_timeout=3600)
    svc = CentralService.open(central_db, settings)
    try:
        task = svc.submit_task(task_dict(events=20, events_per_range=2, jobs=1))
    finally:
        svc.close()
    old = [
        "DROP INDEX ranges_unheld",
        "CREATE INDEX ranges_ready ON ranges(task_id, process_id) WHERE status = 0",
        f"UPDATE ranges SET panda_id = 999 WHERE task_id = {task} AND process_id = 1",
    ]
    if not isinstance(central_db, Path):
        old.append("ALTER TABLE ranges RESET (fillfactor)")
    run_sql(central_db, *old)
    assert "ranges_ready" in index_names(central_db) and "ranges_unheld" not in index_names(central_db)

    out = CliRunner().invoke(central_group, ["db", "migrate"], obj=obj(settings))
    assert out.exit_code == 0, out.output
    names = index_names(central_db)
    assert "ranges_unheld" in names and "ranges_ready" not in names
    assert db_rows(central_db, "SELECT count(*) FROM ranges WHERE status = 0 AND panda_id IS NOT NULL") == [(0,)]
    if not isinstance(central_db, Path):
        options = db_rows(central_db, "SELECT reloptions FROM pg_class WHERE oid = 'ranges'::regclass")[0][0]
        assert "fillfactor=50" in options

    svc = CentralService.open(central_db, settings)
    try:
        job = svc.acquire_jobs("SITE", 1)[0]["PandaID"]
        got = svc.acquire_event_ranges(job, task, 20)
        assert sorted(int(r["eventRangeID"].split("-")[3]) for r in got) == list(range(1, 11))
    finally:
        svc.close()


def hot_updates(url: str) -> tuple[int, int]:
    """(n_tup_upd, n_tup_hot_upd) of the ranges table, once the service's backends have reported them."""
    rows = db_rows(url, "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'ranges'")
    return int(rows[0][0]), int(rows[0][1])


def test_finishing_ranges_is_a_hot_update_on_postgresql(pg_cluster, tmp_path):
    """200 ranges claimed then finished: the claims leave the ready index (not HOT), a finish changes no indexed
    column and mostly finds room on its page (fillfactor 50: ~95%), so most of the 200 finishes are HOT updates
    (none were with the index predicated on status)."""
    url = pg_cluster.fresh_database()
    svc = CentralService.open(url, db_settings(url, tmp_path, heartbeat_timeout=3600))
    try:
        task = svc.submit_task(task_dict(events=400, events_per_range=2, jobs=1))
        job = svc.acquire_jobs("SITE", 1)[0]["PandaID"]
        got = []
        for _ in range(4):
            batch = svc.acquire_event_ranges(job, task, 50)
            out = svc.update_event_ranges(
                [{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in batch]
            )
            assert out["Results"] == ["applied"] * len(batch)
            got += batch
        assert len(got) == 200
    finally:
        svc.close()  # its backends end and report their statistics
    deadline = time.monotonic() + 15
    while True:
        updates, hot = hot_updates(url)
        if updates >= 400 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert updates >= 400, f"claims and finishes not all counted: {updates} updates"
    assert hot >= 160, f"only {hot} of {updates} range updates were HOT: the finishes are not"
