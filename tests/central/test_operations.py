"""Operating the central service on PostgreSQL: `central db migrate`, a clear one-line error for an unreachable
database, reconnecting after a database restart, the watchdog once across processes (an advisory-lock lease)
and `central serve --workers 2`: real processes, real PostgreSQL (tests/pgcluster.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import requests
from click.testing import CliRunner

from harvester_edge.central.server import EmbeddedCentral
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.cli import central_group  # with `serve` (the service with the monitor) registered

from .conftest import db_settings, task_dict


def obj(settings: CentralSettings) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(central=settings))


def test_db_migrate_creates_the_schema_on_both_backends(empty_central_db, tmp_path):
    central_db = empty_central_db
    settings = db_settings(central_db, tmp_path)
    for _ in range(2):  # a second run finds everything in place
        out = CliRunner().invoke(central_group, ["db", "migrate"], obj=obj(settings))
        assert out.exit_code == 0, out.output
        assert "schema version 1, up to date" in out.output
    svc = CentralService.open(central_db, settings)
    try:
        assert {r["class"] for r in svc.list_errors()}  # the seeded rules are there, once
        assert len(svc.list_errors()) == len({(r["source"], r["code"], r["diag_pattern"]) for r in svc.list_errors()})
    finally:
        svc.close()


def test_migrate_adds_missing_columns_on_postgresql(pg_cluster, tmp_path):  # SQLite's: test_tokens.py
    """A schema-1 database made before the added columns gains them (the same upgrade_columns as SQLite)."""
    import psycopg

    url = pg_cluster.fresh_url()
    CentralService.open(url, db_settings(url, tmp_path)).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE token_keys DROP COLUMN claims")
        conn.execute("ALTER TABLE jobs DROP COLUMN log_file")
    out = CliRunner().invoke(central_group, ["db", "migrate"], obj=obj(db_settings(url, tmp_path)))
    assert out.exit_code == 0, out.output
    with psycopg.connect(url) as conn:
        cols = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema=current_schema()"
            )
        }
    assert {"claims", "log_file"} <= cols


def test_unreachable_database_is_a_one_line_error(tmp_path):  # a server to reach: PostgreSQL only
    url = "postgresql://someone:secret-pw@127.0.0.1:1/nothing"
    settings = CentralSettings(db=url, files_dir=tmp_path, pool={"connect_timeout": 2})
    code = (
        "import sys; from types import SimpleNamespace; from harvester_edge.cli import central_group;"
        "from harvester_edge.central.settings import CentralSettings;"
        f"c = CentralSettings.model_validate_json({settings.model_dump_json()!r});"
        "central_group.main(sys.argv[1:], obj=SimpleNamespace(config=SimpleNamespace(central=c)))"
    )
    for args in (["serve"], ["db", "migrate"]):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "cannot connect to PostgreSQL" in lines[0] and "127.0.0.1:1" in lines[0]
        assert "secret-pw" not in proc.stderr and "Traceback" not in proc.stderr
        assert time.monotonic() - t0 < 30


def test_service_reconnects_after_a_database_restart(pg_cluster, tmp_path):  # a server restart: PostgreSQL only
    url = pg_cluster.fresh_url()
    central = EmbeddedCentral(CentralSettings(db=url, files_dir=tmp_path, trusted=True, port=0))
    central.start()
    try:
        svc = central.service
        task = svc.submit_task(task_dict(events=100, jobs=2))
        job = svc.acquire_jobs("SITE", 1)[0]["PandaID"]
        first = svc.acquire_event_ranges(job, task, 2)
        pg_cluster.restart()  # every connection of the service is cut
        assert svc.show_task(task)["status"] == "running"  # a reader
        out = svc.update_event_ranges([{"eventRangeID": r["eventRangeID"], "eventStatus": "finished"} for r in first])
        assert out["Results"] == ["applied", "applied"]  # the writer
        pg_cluster.restart()
        answer = requests.post(  # and over HTTP (the event loop's group commit)
            central.url + "/server/panda/getEventRanges",
            data={"pandaID": job, "jobsetID": task, "nRanges": 3},
            headers={"Accept": "application/json"},
            timeout=10,
        ).json()
        assert len(answer["eventRanges"]) == 3, answer
    finally:
        central.stop()


# PostgreSQL only: several service processes (an advisory lock); SQLite runs one service process
def test_watchdog_runs_in_one_process_and_moves_when_it_stops(pg_cluster, tmp_path):
    url = pg_cluster.fresh_url()
    settings = CentralSettings(db=url, files_dir=tmp_path, trusted=True, port=0, watchdog_interval=0.05)
    a, b = EmbeddedCentral(settings), EmbeddedCentral(settings)
    a.start()
    time.sleep(0.3)  # a holds the lease
    b.start()
    try:
        time.sleep(1.0)
        assert a.watchdog_runs > 5 and b.watchdog_runs == 0, (a.watchdog_runs, b.watchdog_runs)
        a.stop()  # its lease connection closes: b takes over
        time.sleep(1.0)
        assert b.watchdog_runs > 5
    finally:
        a.stop()
        b.stop()


def test_serve_workers_needs_postgresql(tmp_path):  # the refusal on SQLite
    settings = CentralSettings(db=tmp_path / "central.db", trusted=True)
    out = CliRunner().invoke(central_group, ["serve", "--workers", "2"], obj=obj(settings))
    assert out.exit_code != 0 and "needs central.db: postgresql://" in out.output
    assert not (tmp_path / "central.db").exists()


# PostgreSQL only: --workers needs it
def test_serve_workers_two_processes_share_the_socket_and_survive_kill_9(pg_cluster, tmp_path):
    url = pg_cluster.fresh_url()
    settings = CentralSettings(db=url, files_dir=tmp_path, trusted=True, port=0)
    code = (
        "import sys, logging; from types import SimpleNamespace; from harvester_edge.cli import central_group;"
        "from harvester_edge.central.settings import CentralSettings;"
        f"c = CentralSettings.model_validate_json({settings.model_dump_json()!r});"
        "central_group.main(['serve', '--workers', '2'], obj=SimpleNamespace(config=SimpleNamespace(central=c)))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        base = line.split()[4]
        svc = CentralService.open(url, settings)
        task = svc.submit_task(task_dict(events=200, events_per_range=2, jobs=4))
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2, children
        jobs = [
            requests.post(
                base + "/server/panda/getJob",
                data={"siteName": "S"},
                headers={"Accept": "application/json"},
                timeout=10,
            ).json()["PandaID"]
            for _ in range(4)
        ]
        assert len(set(jobs)) == 4
        subprocess.run(["kill", "-9", children[0]], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the parent starts another
            now = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if len(now) == 2 and children[0] not in now:
                break
            time.sleep(0.1)
        assert len(now) == 2 and children[0] not in now, now
        got = []
        for job in jobs:  # every request is answered (by whichever process), no range twice
            for _ in range(3):
                answer = requests.post(
                    base + "/server/panda/getEventRanges",
                    data={"pandaID": job, "jobsetID": task, "nRanges": 5},
                    headers={"Accept": "application/json"},
                    timeout=10,
                ).json()
                got += [r["eventRangeID"] for r in answer["eventRanges"]]
        assert len(got) == 60 and len(set(got)) == 60
        svc.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.parametrize("value", ["mysql://x/y", "sqlite:///x.db"])
def test_other_urls_are_refused(value):
    with pytest.raises(ValueError, match="SQLite file path or a postgresql:// URL"):
        CentralSettings(db=value)
