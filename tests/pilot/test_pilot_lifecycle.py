"""The real PanDA pilot (panda-pilot from PyPI) runs ordinary jobs of the embedded service end to end."""

from __future__ import annotations

import html
import io
import json
import tarfile

import requests

from .harness import trf_script


def job_row(central, panda_id: int):
    return central.service.db.query("SELECT * FROM jobs WHERE panda_id=?", (panda_id,))[0]


def submit(central, trf_url: str, **over) -> int:
    spec = {
        "name": "plain",
        "transformation": trf_url,
        "job_parameters": "--events 3 --tag 'a b'",
        "jobs": 1,
        "max_attempts": 1,
        "cores": 1,
        "memory_mb": 1000,
        "walltime": 600,
        "output_files": [],
    }
    spec.update(over)
    return central.service.submit_task(spec)


def test_full_lifecycle(site):
    """getJob -> transformation downloaded -> starting -> running -> heartbeats -> finished, in both modes."""
    url = site.trf.add("ok.sh", trf_script(sleep=7))
    task_id = submit(site.central, url)
    run = site.run()
    assert run.returncode == 0, run.output[-4000:]
    assert "/trf/ok.sh" in site.trf.served  # the pilot downloaded the transformation from the local server
    assert "trf args: --events 3 --tag a b" in run.output or (run.workdir / "").exists()
    # heartbeats: 'running' sent again while the payload ran (heartbeat period 2 s here)
    assert run.updates("starting") >= 1 and run.updates("running") >= 2 and run.updates("finished") == 1
    shown = site.central.service.show_task(task_id)
    assert shown["status"] == "finished" and shown["ranges"] == {"finished": 1}, shown
    [job] = shown["jobs"]
    row = job_row(site.central, job["panda_id"])
    states = [s for s, _ in json.loads(row["state_history"])]
    assert states == ["sent", "starting", "running", "finished"]
    assert row["start_time"] and row["end_time"] and row["end_time"] >= row["start_time"]
    assert row["pilot_id"].endswith("3.7.0.36") and len(row["pilot_timing"].split("|")) == 6
    assert row["cpu_unit"]  # the pilot's CPU description
    if site.mode == "token":  # the job went to the pilot's own identity (ownership.py)
        assert (row["harvester_id"], row["worker_id"]) == ("edge-test", "1")
    # the log tarball: staged out by the pilot (mv to a local directory) and recorded with its metadata
    log = json.loads(row["log_file"])
    assert log["lfn"] == f"plain.{job['panda_id']}.log.tgz" and log["fsize"] > 0 and log["adler32"]
    assert any(p.name == log["lfn"] for p in run.log_tarballs())
    worker = site.central.service.db.query("SELECT pilot_status FROM workers WHERE harvester_id='edge-test'")
    assert worker and worker[0]["pilot_status"] == "finished"  # updateWorkerPilotStatus started ... finished
    # ... and all of it on the monitor's job page, the tarball downloadable from there
    params = {} if site.mode == "trusted" else {"token": site.central.authority.issue("ops", ["admin"])}
    page = requests.get(f"{site.central.url}/monitor/job/{job['panda_id']}", params=params, timeout=10)
    assert page.status_code == 200
    for text in ("PanDA pilot", row["pilot_id"], "stage-in", log["lfn"], f"/monitor/job/{job['panda_id']}/log"):
        assert html.escape(text) in page.text, text
    assert page.text.count('class="state') >= 5  # the state history, one badge per state
    tarball = requests.get(f"{site.central.url}/monitor/job/{job['panda_id']}/log", params=params, timeout=10)
    assert tarball.status_code == 200 and len(tarball.content) == log["fsize"]
    assert tarfile.open(fileobj=io.BytesIO(tarball.content)).getnames()  # a real tarball, as the pilot made it


def test_failing_payload_fails_with_the_pilots_error_code(trusted_site):
    """(trusted mode only: pilot 3.7 waits ~2 min for the log stage-out of a failed job, see README)"""
    site = trusted_site
    url = site.trf.add("bad.sh", trf_script(exit_code=3))
    task_id = submit(site.central, url, max_attempts=1)
    run = site.run()
    shown = site.central.service.show_task(task_id)
    [job] = shown["jobs"]
    row = job_row(site.central, job["panda_id"])
    assert row["status"] == "failed", run.output[-4000:]
    sent = run.output.rsplit("'state': 'failed'", 1)[1]
    code = int(sent.split("'pilotErrorCode': ", 1)[1].split(",", 1)[0])
    assert code != 0 and row["pilot_error_code"] == code  # what the pilot reported is what is stored
    assert row["trans_exit_code"] == 3
    assert row["pilot_log"]  # the pilot's log extract of a failed job
    assert shown["status"] == "failed" and shown["ranges"] == {"failed": 1}
    assert [s for s, _ in json.loads(row["state_history"])][-1] == "failed"


def test_job_outlives_its_initial_token(short_token_site):
    """10 s access tokens, a 25 s job: the pilot refreshes (get_access_token as pilot_server, JSON answer) and its
    final updateJob is accepted; the job finishes instead of dying as 'lost heartbeat'."""
    site = short_token_site
    initial = (site.token_dir / "token").read_text()
    url = site.trf.add("long.sh", trf_script(sleep=25))
    task_id = submit(site.central, url)
    run = site.run("--token-refresh", "3")
    assert run.returncode == 0, run.output[-4000:]
    assert run.output.count("token refreshed (get_access_token as pilot_server)") >= 3
    assert "token refresh failed" not in run.output and "refused" not in run.output
    assert (site.token_dir / "token").read_text() != initial
    shown = site.central.service.show_task(task_id)
    assert shown["status"] == "finished" and shown["jobs"][0]["status"] == "finished", shown
    assert run.updates("finished") == 1 and "server error (403)" not in run.output
