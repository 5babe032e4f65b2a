"""A persistent pilot's job request is read like every other pilot file: safely, capped, validated field by field."""

from __future__ import annotations

import json
import os
import threading

import pytest

from harvester_edge import pilot_files
from jumbo import protocol


def plant(ap, seq: int, body: bytes) -> str:
    path = ap / f"{protocol.JOB_REQUESTS}.{seq}.json"
    path.write_bytes(body)
    return str(path)


def test_a_real_job_request_reads_back(tmp_path):
    protocol.write_job_request(tmp_path, 3)
    request = pilot_files.load_job_request(tmp_path / f"{protocol.JOB_REQUESTS}.3.json")
    assert request.seq == 3 and request.time > 0
    with pytest.raises(protocol.ProtocolError, match="sequence already used"):
        protocol.write_job_request(tmp_path, 3)


def test_links_fifos_and_big_job_requests_are_refused(tmp_path):
    os.symlink("/etc/passwd", tmp_path / f"{protocol.JOB_REQUESTS}.1.json")
    with pytest.raises(pilot_files.Unreadable, match="symbolic link"):
        pilot_files.load_job_request(tmp_path / f"{protocol.JOB_REQUESTS}.1.json")
    (tmp_path / "secret").write_text("{}")
    os.link(tmp_path / "secret", tmp_path / f"{protocol.JOB_REQUESTS}.2.json")
    with pytest.raises(pilot_files.Unreadable, match="2 hard links"):
        pilot_files.load_job_request(tmp_path / f"{protocol.JOB_REQUESTS}.2.json")
    big = tmp_path / f"{protocol.JOB_REQUESTS}.3.json"
    with open(big, "wb") as fh:
        fh.truncate(pilot_files.JOB_REQUEST_CAP + 1)
    with pytest.raises(pilot_files.Unreadable, match="over the cap"):
        pilot_files.load_job_request(big)
    os.mkfifo(tmp_path / f"{protocol.JOB_REQUESTS}.4.json")
    done = threading.Event()

    def read_fifo() -> None:
        with pytest.raises(pilot_files.Unreadable, match="a FIFO"):
            pilot_files.load_job_request(tmp_path / f"{protocol.JOB_REQUESTS}.4.json")
        done.set()

    threading.Thread(target=read_fifo, daemon=True).start()
    assert done.wait(5), "opening a FIFO blocked"


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"not json", "not valid JSON"),
        (json.dumps({"protocol": 1, "time": 1.0}).encode(), "'seq'"),
        (json.dumps({"protocol": 1, "seq": "abc", "time": 1.0}).encode(), "'seq'"),
        (json.dumps({"protocol": 1, "seq": 1, "time": "abc"}).encode(), "'time'"),
        (json.dumps({"protocol": 2, "seq": 1}).encode(), "unknown protocol version"),
    ],
)
def test_job_requests_of_the_wrong_shape_name_the_file_and_field(tmp_path, body, expected):
    path = plant(tmp_path, 7, body)
    with pytest.raises(protocol.ProtocolError, match=expected) as info:
        pilot_files.load_job_request(path)
    assert f"{protocol.JOB_REQUESTS}.7.json" in str(info.value)


def test_new_jobs_answers_are_validated_both_ways(tmp_path):
    job = {"PandaID": 5, "taskID": 2, "jobsetID": 2, "payload": {"callable": "jumbo.payloads:sleep"}}
    path = protocol.write_new_jobs(tmp_path, 1, [job])
    assert protocol.load_new_jobs(path).jobs == [job]
    assert protocol.load_new_jobs(protocol.write_new_jobs(tmp_path, 2, [], stop="queue draining")).stop
    with pytest.raises(protocol.ProtocolError, match="needs jobs or a stop"):
        protocol.write_new_jobs(tmp_path, 3, [])
    with pytest.raises(protocol.ProtocolError, match="exactly one of 'callable' or 'command'"):
        protocol.write_new_jobs(tmp_path, 4, [{**job, "payload": {}}])
    (tmp_path / f"{protocol.NEW_JOBS}.5.json").write_text(json.dumps({"protocol": 1, "seq": 5, "jobs": "x"}))
    with pytest.raises(protocol.ProtocolError, match="'jobs' must be a list"):
        protocol.load_new_jobs(tmp_path / f"{protocol.NEW_JOBS}.5.json")
