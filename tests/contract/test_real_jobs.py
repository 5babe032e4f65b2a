"""Real jobs (no harvester-edge extensions) -> a payload the jumbo pilot runs, and workers shaped from the job.

The job comes from the real server's own acquire_jobs (its Protocol.Response.appendJob builds the dictionary)."""

from __future__ import annotations

import os
import stat

import pytest

from contract.harness import ORIGIN, TOKEN
from harvester_edge import jobpayload
from harvester_edge.central.client import CentralClient
from harvester_edge.seams.files import PilotFiles
from harvester_edge.seams.http import HttpTransport
from harvester_edge.workers import write_job_spec
from jumbo import protocol
from jumbo.execute import PayloadRunner


def test_command_payload_mapping():
    job = {
        "PandaID": 1,
        "transformation": "https://example.org/trf/Sim_tf.py",
        "jobPars": "--maxEvents 10 --preExec 'x = {\"a\": 1}'",
    }
    payload = jobpayload.command_payload(job)
    assert payload["command"] == [
        "Sim_tf.py",
        "--maxEvents",
        "10",
        "--preExec",
        'x = {{"a": 1}}',
        *jobpayload.RANGE_ARGS,
    ]
    placed = jobpayload.command_payload(
        {"transformation": "/opt/trf.sh", "jobPars": "--from {first_event} --to {last_event} -o {output}"}
    )
    assert placed["command"] == ["/opt/trf.sh", "--from", "{first_event}", "--to", "{last_event}", "-o", "{output}"]
    embedded = {"PandaID": 2, "payload": {"callable": "jumbo.payloads:noop"}, "transformation": "jumbo"}
    assert jobpayload.pilot_job(embedded) is embedded and not jobpayload.is_real(embedded)
    assert not jobpayload.from_real_server({**embedded, "eventsPerRange": 10})
    for bad, field in (
        ({"transformation": "NULL"}, "transformation"),
        ({"transformation": "t", "jobPars": "'x"}, "jobPars"),
    ):
        with pytest.raises(jobpayload.JobPayloadError, match=field):
            jobpayload.command_payload(bad)
    assert jobpayload.events_total({"nEvents": 50}) == 50 and jobpayload.events_total({"PandaID": 1}) is None


def test_worker_shape_from_core_count_ram_and_walltime():
    shape = jobpayload.worker_shape(
        {"coreCount": 8, "minRamCount": 16000, "maxWalltime": 7200},
        cores_per_node=64,
        ranks_per_node=64,
        memory_mb=64000,
        walltime_min=600,
        walltime_max=4 * 3600,
    )
    assert shape == jobpayload.WorkerShape(ranks_per_node=4, walltime=7200)  # memory: 64000 // 16000 ranks
    shape = jobpayload.worker_shape({"coreCount": 8, "maxWalltime": 99999}, 64, 64, None, 600, 3600)
    assert shape == jobpayload.WorkerShape(ranks_per_node=8, walltime=3600)  # cores; the queue's walltime cap
    assert jobpayload.worker_shape({}, 64, 16, None, 600, 3600) == jobpayload.WorkerShape(16, 3600)


def test_a_real_servers_job_runs_in_the_jumbo_pilot(panda_server, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    client = CentralClient(HttpTransport(panda_server.url, timeout=20), token_file=token_file, origin=ORIGIN)
    job = client.acquire_jobs("EDGE_SITE")[0]
    assert not set(jobpayload.EXTENSIONS) & set(job)  # a real job: none of our extensions
    spec = jobpayload.pilot_job(job)
    assert jobpayload.from_real_server(spec) and not jobpayload.is_real(spec)  # payload added, still a real job
    ap = tmp_path / "ap"
    ap.mkdir()
    write_job_spec(
        PilotFiles(), ap, [spec], walltime=3600, drain_warning=60, ranks=2
    )  # validated as the pilot reads it
    loaded = protocol.load_job_spec(ap / protocol.JOB_SPEC)["jobs"][0]
    assert (loaded["PandaID"], loaded["jobsetID"]) == (job["PandaID"], 77)

    # the transformation (run.sh, from the job's URL) as the site installs it; it records what it was given
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trf = bin_dir / "run.sh"
    trf.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/args.txt"\nfor a; do case $a in --outputFile=*) '
        'echo done > "${a#--outputFile=}";; esac; done\n'
    )
    trf.chmod(trf.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runner = PayloadRunner(rank=0, fsync_outputs=False)
    try:
        outcome = runner.run(loaded["payload"], 11, 20, str(tmp_path / "out.1"), {"seed": 1}, None)
    finally:
        runner.close()
    assert outcome.status == "finished", outcome
    assert (bin_dir / "args.txt").read_text().split() == [
        "--events",
        "100",
        "--seed",
        "7",
        "--firstEvent=11",
        "--lastEvent=20",
        f"--outputFile={tmp_path}/out.1",
    ]
