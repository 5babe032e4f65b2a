"""Many edge nodes (issue 16 item 4): 3 harvester daemons (own work dirs and bookkeeping DBs, own site names, the
local plugin) against one central service on PostgreSQL with 2 processes (`central serve --workers 2`). A
30,000-event task finishes exactly once through kill -9 of one service process, kill -9 (and restart) of one
daemon, and a PostgreSQL restart, all mid-run. Real processes throughout."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg
import pytest
import yaml

from agents.conftest import Site
from helpers import central_service_config, cli, local_queue, serve_central, sleep_task

pytestmark = pytest.mark.mpi

EVENTS = 30_000
QUEUE = local_queue(None, walltime_max="10m", max_running_workers=1)


def done_events(url: str, task_id: int) -> tuple[str, int]:
    with psycopg.connect(url) as conn:
        status = conn.execute("SELECT status FROM tasks WHERE task_id = %s", (task_id,)).fetchone()[0]
        done = conn.execute(
            "SELECT coalesce(sum(last_event - start_event + 1), 0) FROM ranges WHERE task_id = %s AND status = 3",
            (task_id,),
        ).fetchone()[0]
    return status, int(done)


def service_children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


# PostgreSQL only: several service processes and a database restart (issue 16 item 4)
def test_three_daemons_two_service_processes_faults_exactly_once(pg_cluster, tmp_path):
    url = pg_cluster.fresh_url()
    central_dir = tmp_path / "central"
    central_config, port = central_service_config(central_dir, db=url)
    service = serve_central(central_config, "--workers", "2")
    sites: list[Site] = []
    try:
        task_file = tmp_path / "task.yaml"
        task = sleep_task(EVENTS, 0.0005, per_range=100)
        task["jobs"] = 3
        task_file.write_text(yaml.safe_dump(task))
        deadline = time.monotonic() + 30
        while len(service_children(service.pid)) < 2:
            assert time.monotonic() < deadline and service.poll() is None, (central_dir / "serve.out").read_text()
            time.sleep(0.2)
        task_id = int(
            json.loads(
                subprocess.run(
                    [*cli(central_config), "task", "submit", str(task_file), "--json"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )["task_id"]
        )
        for i in range(3):
            site = Site(
                tmp_path / f"edge{i}", queue=QUEUE, central={"mode": "remote", "url": f"http://127.0.0.1:{port}"}
            )
            config = yaml.safe_load(site.config_path.read_text())
            config["site"] = f"EDGE_{i}"
            config["central"]["trusted"] = True
            site.config_path.write_text(yaml.safe_dump(config))
            sites.append(site)
            site.start()

        def wait_for(events: int, timeout: float = 300) -> None:
            deadline = time.monotonic() + timeout
            while done_events(url, task_id)[1] < events:
                assert time.monotonic() < deadline, f"{done_events(url, task_id)}\n{sites[0].log_tail()}"
                time.sleep(0.5)

        wait_for(3_000)
        victim = service_children(service.pid)[0]
        subprocess.run(["kill", "-9", victim], check=True)  # one service process dies; the parent starts another
        wait_for(9_000)
        sites[1].kill()  # one daemon dies mid-run (kill -9) and comes back on its own bookkeeping DB
        time.sleep(2)
        sites[1].start()
        wait_for(15_000)
        pg_cluster.restart()  # every connection of both service processes is cut
        deadline = time.monotonic() + 400
        while done_events(url, task_id)[0] != "finished":
            assert time.monotonic() < deadline, f"{done_events(url, task_id)}\n{sites[0].log_tail()}"
            time.sleep(1)
        assert victim not in service_children(service.pid) and len(service_children(service.pid)) == 2
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT start_event, last_event, status FROM ranges WHERE task_id = %s", (task_id,)
            ).fetchall()
            sites_used = {
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT j.site FROM jobs j JOIN ranges r ON r.panda_id = j.panda_id "
                    "WHERE r.task_id = %s AND r.status = 3",
                    (task_id,),
                )
            }
        covered = [ev for a, b, status in rows if status == 3 for ev in range(a, b + 1)]
        assert sorted(covered) == list(range(1, EVENTS + 1)), "an event is missing or was finished twice"
        assert all(status == 3 for _, _, status in rows)
        assert len(sites_used) >= 2, sites_used  # the work was spread over the edge nodes
    finally:
        for site in sites:
            site.cleanup()
        service.terminate()
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(5)
