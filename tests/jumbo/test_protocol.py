"""jumbo.protocol: both sides of the shared-file messenger, on real files."""

from __future__ import annotations

import json
import os

import pytest

from jumbo import protocol
from jumbo.protocol import ProtocolError


def test_request_ranges_status_round_trip(ap, h):
    h.write_spec(ap, [h.sim_job()], prefetch=2)
    spec = protocol.read_job_spec(ap)
    assert spec["pilot"]["prefetch"] == 2 and spec["pilot"]["mode"] == "file"  # defaults filled
    assert spec["jobs"][0]["PandaID"] == 1001

    seq = protocol.next_seq(ap, protocol.REQUESTS)
    assert seq == 1
    protocol.write_event_request(ap, seq, {1001: {"pandaID": 1001, "taskID": 77, "jobsetID": 5, "nRanges": 3}})
    [req] = protocol.read_event_requests(ap)
    assert req.seq == 1 and req.requests == {1001: {"pandaID": 1001, "taskID": 77, "jobsetID": 5, "nRanges": 3}}
    protocol.mark_consumed(ap, req)
    assert protocol.read_event_requests(ap) == []
    assert protocol.next_seq(ap, protocol.REQUESTS) == 2  # a consumed file still holds its sequence

    ranges = h.make_ranges(77, 1001, 3)
    protocol.write_event_ranges(ap, 1, {1001: ranges}, no_more={1001})
    [answer] = protocol.read_event_ranges(ap)
    assert answer.seq == 1 and answer.ranges[1001] == ranges and answer.no_more == {1001}

    protocol.write_event_status(
        ap,
        1,
        {
            1001: [
                {
                    "eventRangeID": ranges[0]["eventRangeID"],
                    "eventStatus": "finished",
                    "fsize": 3,
                    "adler32": "024d0127",
                }
            ]
        },
    )
    [batch] = protocol.read_event_status(ap)
    assert batch.events[1001][0]["eventStatus"] == "finished"
    protocol.mark_consumed(ap, batch)
    assert (ap / "event_status.1.json.read").exists() and protocol.read_event_status(ap) == []


def test_sequence_never_reused(ap):
    protocol.write_event_ranges(ap, 4, {1: []})
    with pytest.raises(ProtocolError, match="JobsEventRanges.4.json: sequence already used"):
        protocol.write_event_ranges(ap, 4, {1: []})
    protocol.mark_consumed(ap, protocol.stream_path(ap, protocol.RANGES, 4))
    with pytest.raises(ProtocolError, match="sequence already used"):
        protocol.write_event_ranges(ap, 4, {1: []})
    assert not [p for p in os.listdir(ap) if ".tmp." in p]  # no temporary file left behind


@pytest.mark.parametrize(
    "body, match",
    [
        ('{"protocol": 2, "seq": 1, "ranges": {}}', "unknown protocol version 2"),
        ('{"seq": 1, "ranges": {}}', "unknown protocol version None"),
        (
            '{"protocol": 1, "seq": 1, "ranges": {"1": [{"eventRangeID": "a", "startEvent": 5, "lastEvent": 1}]}}',
            "lastEvent 1 < startEvent 5",
        ),
        ('{"protocol": 1, "seq": 1, "ranges": {"x": []}}', "not a PandaID"),
        ('{"protocol": 1, "seq": 1, "ranges": {"1": [{"startEvent": 1, "lastEvent": 2}]}}', "lacks 'eventRangeID'"),
        ('{"protocol": 1, "seq": 1, "ranges": {"1": [], "no_more": 3}', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_ranges_file_names_the_file(ap, body, match):
    (ap / "JobsEventRanges.1.json").write_text(body)
    with pytest.raises(ProtocolError, match=match) as info:
        protocol.read_event_ranges(ap)
    assert "JobsEventRanges.1.json" in str(info.value)


def test_job_spec_validation(ap):
    with pytest.raises(ProtocolError, match="exactly one of 'callable' or 'command'"):
        protocol.write_job_spec(ap, {"jobs": [{"PandaID": 1, "taskID": 2, "payload": {}}]})
    with pytest.raises(ProtocolError, match="mode 'http' needs 'central_url'"):
        protocol.write_job_spec(
            ap, {"jobs": [{"PandaID": 1, "taskID": 2, "payload": {"callable": "m:f"}}], "pilot": {"mode": "http"}}
        )
    with pytest.raises(ProtocolError, match="HPCJobs.json: 'jobs' must be a non-empty list"):
        protocol.write_job_spec(ap, {"jobs": []})


def test_status_values_are_checked(ap):
    protocol.write_event_status(ap, 1, {7: [{"eventRangeID": "r", "eventStatus": "done"}]})
    with pytest.raises(ProtocolError, match="event_status.1.json: range r has eventStatus 'done', not one of"):
        protocol.read_event_status(ap)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"errorCode": "42"}, "range r 'errorCode' must be an integer, got str"),
        ({"errorCode": True}, "range r 'errorCode' must be an integer, got bool"),
        ({"cpuTime": -1.0}, "range r 'cpuTime' is -1.0, outside 0..1e"),
        ({"nEvents": 10**30}, "range r 'nEvents' is 1000000000000000000000000000000, outside"),
        ({"startTime": float("nan")}, "range r 'startTime' is nan, outside"),
        ({"errorDiag": ["a"]}, "range r 'errorDiag' must be a string, got list"),
    ],
)
def test_every_status_field_has_its_type_checked(ap, entry, message):
    protocol.write_event_status(ap, 1, {7: [{"eventRangeID": "r", "eventStatus": "failed", **entry}]})
    with pytest.raises(ProtocolError, match=message):
        protocol.read_event_status(ap)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"seq": 1, "time": "abc", "events": {}}, "the status file 'time' must be a number, got str 'abc'"),
        ({"seq": "1", "events": {}}, "the status file 'seq' must be an integer, got str"),
        ({"seq": 1, "events": []}, "'events' must be an object keyed by PandaID, got list"),
        ({"seq": 1, "events": {"-3": []}}, "'events' has a key that is not a PandaID"),
        ({"seq": 1, "events": {"7": {"eventRangeID": "r"}}}, "events of job 7 must be a list, got dict"),
    ],
)
def test_status_file_fields_are_checked(ap, body, message):
    protocol.write_json_atomic(protocol.stream_path(ap, protocol.STATUS, 1), body)
    with pytest.raises(ProtocolError, match=message):
        protocol.read_event_status(ap)


@pytest.mark.parametrize(
    "requests, message",
    [
        ({"7": {"nRanges": 0}}, "'nRanges' must be at least 1"),
        ({"7": {"nRanges": -5}}, "'nRanges' is -5, outside"),
        ({"7": {"nRanges": "8"}}, "'nRanges' must be an integer, got str"),
        ({"7": [8]}, "request for job 7 must be an object, got list"),
    ],
)
def test_request_fields_are_checked(ap, requests, message):
    protocol.write_json_atomic(protocol.stream_path(ap, protocol.REQUESTS, 1), {"seq": 1, "requests": requests})
    with pytest.raises(ProtocolError, match=message):
        protocol.read_event_requests(ap)


def test_atomic_write_never_follows_a_link_planted_at_its_temporary_name(ap, tmp_path):
    import os
    import threading

    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, ap / f".{protocol.KILL}.tmp.{os.getpid()}.{threading.get_ident()}")
    protocol.request_drain(ap, "stop")
    assert victim.read_text() == "keep" and protocol.drain_requested(ap)["reason"] == "stop"


def test_snapshots_drain_and_monitor(ap):
    assert protocol.read_heartbeat(ap) is None and protocol.read_worker_attributes(ap) is None
    assert protocol.drain_requested(ap) is None
    protocol.write_heartbeat(ap, {"state": "running", "counts": {"finished": 3}})
    assert protocol.read_heartbeat(ap)["counts"] == {"finished": 3}
    protocol.request_drain(ap, "task killed")
    assert protocol.drain_requested(ap)["reason"] == "task killed"
    (ap / protocol.KILL).write_text("garbage")
    assert "unreadable" in protocol.drain_requested(ap)["reason"]  # a broken kill file still means drain
    (ap / "prmon.3.jsonl").write_text(json.dumps({"rss": 1}) + "\n" + '{"rss": 2')  # last line being written
    assert protocol.read_monitor(ap) == {3: [{"rss": 1}]}
