"""The pilot-file seam: by default exactly jumbo.protocol on real files; recording passes the same results through;
the daemon's own writes into access points (job spec, batch script, drain request, removal) pass it too."""

from __future__ import annotations

import json

import pytest

from harvester_edge.replay import trace
from harvester_edge.replay.recorder import RecordingFiles, TraceWriter
from harvester_edge.seams import files
from harvester_edge.seams.files import DirectFiles, PilotFiles
from jumbo import protocol


def pilot_files(ap):
    ap.mkdir()
    protocol.write_event_request(ap, 1, {7: {"pandaID": 7, "taskID": 1, "jobsetID": 1, "nRanges": 2}})
    protocol.write_event_status(ap, 1, {7: [{"eventRangeID": "1-7-0-0", "eventStatus": "finished"}]})
    protocol.write_heartbeat(ap, {"state": "running"})
    (ap / f"{protocol.STATUS}.2.json").write_text("{not json")


def exercise(ap, seam: PilotFiles):
    out = {"requests": seam.pending(ap, files.REQUESTS), "statuses": seam.pending(ap, files.STATUS)}
    out["request"] = seam.load_event_request(out["requests"][0][1])
    out["status"] = seam.load_event_status(out["statuses"][0][1])
    with pytest.raises(files.ProtocolError):
        seam.load_event_status(out["statuses"][1][1])
    seam.quarantine(out["statuses"][1][1])
    out["beat"] = seam.read_heartbeat(ap)["state"]
    seam.write_event_ranges(ap, 1, {7: [{"eventRangeID": "1-7-1-0", "startEvent": 11, "lastEvent": 20}]}, no_more=[7])
    with pytest.raises(files.ProtocolError):  # a sequence is never written twice
        seam.write_event_ranges(ap, 1, {})
    seam.mark_consumed(ap, out["request"])
    seam.mark_consumed(ap, out["status"])
    out["left"] = seam.pending(ap, files.REQUESTS) + seam.pending(ap, files.STATUS)
    out["files"] = sorted(p.name for p in ap.iterdir())
    return out


def test_default_backend_is_jumbo_protocol(tmp_path):
    assert isinstance(PilotFiles().backend, DirectFiles)
    pilot_files(tmp_path / "ap")
    out = exercise(tmp_path / "ap", PilotFiles())
    assert out["request"].requests == {7: {"pandaID": 7, "taskID": 1, "jobsetID": 1, "nRanges": 2}}
    assert out["beat"] == "running" and out["left"] == []
    assert protocol.load_event_ranges(tmp_path / "ap" / f"{protocol.RANGES}.1.json").no_more == frozenset({7})
    assert f"{protocol.STATUS}.2.json.bad" in out["files"] and f"{protocol.REQUESTS}.1.json.read" in out["files"]


def test_recording_backend_changes_nothing_and_records_every_call(tmp_path):
    pilot_files(tmp_path / "plain")
    pilot_files(tmp_path / "recorded")
    expected = exercise(tmp_path / "plain", PilotFiles())
    writer = TraceWriter(tmp_path / "t.jsonl", trace.header("s", 0.0, str(tmp_path), "i", {}))
    got = exercise(tmp_path / "recorded", PilotFiles(RecordingFiles(DirectFiles(), writer)))
    writer.close()
    assert got["files"] == expected["files"] and got["beat"] == expected["beat"]
    lines = (tmp_path / "t.jsonl").read_text().splitlines()[1:]
    assert len(lines) == 13 and all("@WORK@/recorded" in line for line in lines)
    assert '"type":"ProtocolError"' in lines[4] and '"op":"write_event_ranges"' in lines[7]
    assert '"type":"ProtocolError"' in lines[8]  # the reused sequence, recorded with its error


def test_access_point_writes_pass_the_seam_and_are_recorded(tmp_path):
    """Job spec (makes the access point 0700), batch script (atomic, 0755), drain request, removal: on real files,
    each one record of the trace with what was written."""
    writer = TraceWriter(tmp_path / "t.jsonl", trace.header("s", 0.0, str(tmp_path), "i", {}))
    seam = PilotFiles(RecordingFiles(DirectFiles(), writer))
    ap = tmp_path / "workers" / "w000001"
    spec = {
        "jobs": [{"PandaID": 7, "taskID": 1, "jobsetID": 1, "payload": {"command": ["true"]}}],
        "pilot": {"heartbeat_interval": 10.0, "mode": "file", "prefetch": 1, "n_ranges": 2, "safety_margin": 10.0},
    }
    seam.write_job_spec(ap, spec)
    assert (ap.stat().st_mode & 0o777) == 0o700 and protocol.read_job_spec(ap)["jobs"][0]["PandaID"] == 7
    script = seam.write_script(ap, "worker.sbatch", "#!/bin/bash\ntrue\n")
    assert script.read_text() == "#!/bin/bash\ntrue\n" and (script.stat().st_mode & 0o777) == 0o755
    seam.request_drain(ap, "kill requested by the harvester")
    assert protocol.drain_requested(ap) is not None
    seam.remove_access_point(ap)
    seam.remove_access_point(ap)  # gone already: fine
    assert not ap.exists()
    writer.close()
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()[1:]]
    assert [r["op"] for r in records] == [
        "write_job_spec",
        "write_script",
        "request_drain",
        "remove_access_point",
        "remove_access_point",
    ]
    assert records[0]["args"] == ["@WORK@/workers/w000001", spec]
    assert records[1]["args"] == ["@WORK@/workers/w000001", "worker.sbatch", "#!/bin/bash\ntrue\n"]
    assert records[2]["args"] == ["@WORK@/workers/w000001", "kill requested by the harvester"]
