"""A real daemon (local plugin, real mpirun pilots) archives each ended worker's access point before removing it,
and the monitor links and serves the archive."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from agents.conftest import numpy_task
from helpers import local_queue, wait_for
from web.conftest import get, start

pytestmark = pytest.mark.mpi


def test_ended_access_points_are_archived_removed_and_served_by_the_monitor(make_site, tmp_path):
    archives = tmp_path / "archives"
    site = make_site(queue=local_queue(None), paths={"archives": str(archives)}, daemon={"cleanup_delay": "1s"})
    task_id = site.submit_task(**numpy_task(events=40))
    site.start()
    assert site.wait_task(task_id, 180)["status"] == "finished"
    ended = site.wait_workers_ended()
    assert ended
    wait_for(lambda: all((archives / f"worker-{w[0]}.tar.gz").exists() for w in ended), 60, "every worker archived")
    site.stop()
    aps = [r[0] for r in site.harvester_db().execute("SELECT access_point FROM workers WHERE cleaned_at IS NOT NULL")]
    assert len(aps) == len(ended) and not any((site.work / "workers" / ap).exists() for ap in aps)

    wid = ended[0][0]
    with tarfile.open(archives / f"worker-{wid}.tar.gz") as tar:
        names = tar.getnames()
    assert "jobReport.json" in names and "MANIFEST.json" in names
    assert any(n.startswith("logs/payload.") for n in names) and any(n.startswith("prmon.") for n in names)

    shown = json.loads(site.cli("worker", "show", str(wid), "--json").stdout)
    assert shown["archive"] == str(archives / f"worker-{wid}.tar.gz") and shown["cleaned_at"]

    central = start(site.work)  # the monitor over this site's DBs, as `central serve` would show them
    try:
        page = get(f"{central.url}/monitor/worker/{wid}").text
        assert f"/monitor/worker/{wid}/archive" in page
        got = get(f"{central.url}/monitor/worker/{wid}/archive")
        assert got.status_code == 200 and got.headers["content-type"] == "application/gzip"
        with tarfile.open(fileobj=io.BytesIO(got.content)) as tar:
            manifest = json.load(tar.extractfile("MANIFEST.json"))
        assert manifest["worker"] == wid
        assert get(f"{central.url}/monitor/worker/999999/archive").status_code == 404
    finally:
        central.stop()
