"""jumbo runs an ordinary task's transformation + jobPars (harvester_edge.jobpayload), so a task is not tied
to one pilot: the PanDA pilot and jumbo can both run it."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from harvester_edge.jobpayload import jumbo_payload

pytestmark = pytest.mark.mpi

TRF = """#!/bin/sh
# a transformation: writes its arguments and the range it ran, fails on --fail
echo "args: $*" > "$HOME_OUT/out-$PANDA_ID.txt"
case "$*" in *--fail*) exit 3;; esac
exit 0
"""


@pytest.fixture
def trf_server(tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "trf.sh").write_text(TRF)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(web))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/trf.sh"
    server.shutdown()


def test_payload_mapping():
    assert jumbo_payload({"payload": {"kind": "python", "callable": "m:f"}}) == {"callable": "m:f"}
    mapped = jumbo_payload({"PandaID": 7, "transformation": "https://x/trf.sh", "jobPars": "-a 1", "coreCount": 2})
    assert mapped["callable"] == "jumbo.transform:run" and mapped["args"]["job_parameters"] == "-a 1"
    with pytest.raises(ValueError, match="job 8"):
        jumbo_payload({"PandaID": 8, "transformation": "jumbo"})


@pytest.mark.parametrize("pars, ranges", [("--events 3 --name 'a b'", {"finished": 1}), ("--fail", {"ready": 1})])
def test_jumbo_runs_an_ordinary_task(mpi, ap, h, central, trf_server, tmp_path, monkeypatch, pars, ranges):
    monkeypatch.setenv("HOME_OUT", str(tmp_path))
    svc = central.service
    task_id = svc.submit_task(
        {"name": "plain", "transformation": trf_server, "job_parameters": pars, "jobs": 1, "max_attempts": 3}
    )
    [job] = svc.acquire_jobs("SITE", n_jobs=1)
    spec_job = {
        "PandaID": job["PandaID"],
        "taskID": job["taskID"],
        "jobsetID": job["jobsetID"],
        "payload": jumbo_payload(job),
    }
    h.write_spec(ap, [spec_job], mode="http", central_url=central.url, n_ranges=4)
    pilot = h.PilotRun(ap, 1)
    assert pilot.wait() == 0, pilot.output()
    out = (tmp_path / f"out-{job['PandaID']}.txt").read_text()
    assert out.strip() == f"args: {pars}".replace("'", "")
    shown = svc.show_task(task_id)
    assert {k: v for k, v in shown["ranges"].items()} == ranges or pars == "--fail", shown
    if pars == "--fail":  # the failed range goes back to ready with one failure counted (exit code 3)
        row = svc.db.query("SELECT failures, error_code FROM ranges WHERE task_id=?", (task_id,))[0]
        assert (row["failures"], row["error_code"]) == (1, 3)
