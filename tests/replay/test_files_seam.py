"""The pilot-file seam: by default exactly jumbo.protocol on real files; recording passes the same results through."""

from __future__ import annotations

import pytest

from harvester_edge.replay import trace
from harvester_edge.replay.recorder import RecordingFiles, TraceWriter
from harvester_edge.seams import files
from jumbo import protocol


def pilot_files(ap):
    ap.mkdir()
    protocol.write_event_request(ap, 1, {7: {"pandaID": 7, "taskID": 1, "jobsetID": 1, "nRanges": 2}})
    protocol.write_event_status(ap, 1, {7: [{"eventRangeID": "1-7-0-0", "eventStatus": "finished"}]})
    protocol.write_heartbeat(ap, {"state": "running"})
    (ap / f"{protocol.STATUS}.2.json").write_text("{not json")


def exercise(ap):
    out = {"requests": files.pending(ap, files.REQUESTS), "statuses": files.pending(ap, files.STATUS)}
    out["request"] = files.load_event_request(out["requests"][0][1])
    out["status"] = files.load_event_status(out["statuses"][0][1])
    with pytest.raises(files.ProtocolError):
        files.load_event_status(out["statuses"][1][1])
    files.quarantine(out["statuses"][1][1])
    out["beat"] = files.read_heartbeat(ap)["state"]
    files.write_event_ranges(ap, 1, {7: [{"eventRangeID": "1-7-1-0", "startEvent": 11, "lastEvent": 20}]}, no_more=[7])
    with pytest.raises(files.ProtocolError):  # a sequence is never written twice
        files.write_event_ranges(ap, 1, {})
    files.mark_consumed(ap, out["request"])
    files.mark_consumed(ap, out["status"])
    out["left"] = files.pending(ap, files.REQUESTS) + files.pending(ap, files.STATUS)
    out["files"] = sorted(p.name for p in ap.iterdir())
    return out


def test_default_backend_is_jumbo_protocol(tmp_path):
    assert isinstance(files.backend(), files.DirectFiles)
    pilot_files(tmp_path / "ap")
    out = exercise(tmp_path / "ap")
    assert out["request"].requests == {7: {"pandaID": 7, "taskID": 1, "jobsetID": 1, "nRanges": 2}}
    assert out["beat"] == "running" and out["left"] == []
    assert protocol.load_event_ranges(tmp_path / "ap" / f"{protocol.RANGES}.1.json").no_more == frozenset({7})
    assert f"{protocol.STATUS}.2.json.bad" in out["files"] and f"{protocol.REQUESTS}.1.json.read" in out["files"]


def test_recording_backend_changes_nothing_and_records_every_call(tmp_path):
    pilot_files(tmp_path / "plain")
    pilot_files(tmp_path / "recorded")
    expected = exercise(tmp_path / "plain")
    writer = TraceWriter(tmp_path / "t.jsonl", trace.header("s", 0.0, str(tmp_path), "i", {}))
    with files.installed(RecordingFiles(files.backend(), writer)):
        got = exercise(tmp_path / "recorded")
    writer.close()
    assert isinstance(files.backend(), files.DirectFiles)
    assert got["files"] == expected["files"] and got["beat"] == expected["beat"]
    lines = (tmp_path / "t.jsonl").read_text().splitlines()[1:]
    assert len(lines) == 13 and all("@WORK@/recorded" in line for line in lines)
    assert '"type":"ProtocolError"' in lines[4] and '"op":"write_event_ranges"' in lines[7]
    assert '"type":"ProtocolError"' in lines[8]  # the reused sequence, recorded with its error
