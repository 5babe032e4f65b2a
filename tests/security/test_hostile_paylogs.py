"""Payload log files are pilot input: read_payload_log refuses what is not a regular, singly linked file under its
cap, skips lines that are not records, never follows a link, never blocks on a FIFO, and takes complete lines only."""

from __future__ import annotations

import json
import os

import pytest

from harvester_edge import pilot_files
from harvester_edge.pilot_files import Unreadable


def record(job: int = 5, msg: str = "hello") -> bytes:
    rec = {"time": 1.5, "task": 1, "job": job, "rank": 0, "range": "r", "stream": "stdout", "msg": msg}
    return json.dumps(rec).encode()


@pytest.fixture
def ap(tmp_path):
    (tmp_path / "logs").mkdir()
    return tmp_path


def test_complete_lines_from_an_offset_with_their_offsets(ap):
    line = record() + b"\n"
    (ap / "logs" / "payload.0.jsonl").write_bytes(line * 3 + b'{"half": ')
    got = pilot_files.read_payload_log(ap, "payload.0.jsonl", 0)
    assert [r["offset"] for r in got["records"]] == [0, len(line), 2 * len(line)]
    assert got["offset"] == 3 * len(line) and got["skipped"] == 0 and got["records"][0]["msg"] == "hello"
    again = pilot_files.read_payload_log(ap, "payload.0.jsonl", got["offset"])
    assert again["records"] == [] and again["offset"] == got["offset"]  # the half line waits for its end
    assert pilot_files.payload_logs(ap) == ["payload.0.jsonl"]


def test_garbage_lines_are_skipped_and_counted(ap):
    garbage = b'not json\n{"job": "x"}\n[1]\n\xff\xfe\n{"job": 1, "rank": 0, "stream": "evil", "msg": "", "time": 1}\n'
    (ap / "logs" / "payload.1.jsonl").write_bytes(garbage + record(msg="ok") + b"\n" + b"[" * 100000 + b"\n")
    got = pilot_files.read_payload_log(ap, "payload.1.jsonl", 0)
    assert [r["msg"] for r in got["records"]] == ["ok"] and got["skipped"] == 6


def test_text_any_encoder_takes(ap):
    line = b'{"time": 1, "job": 1, "rank": 0, "stream": "stderr", "msg": "a\\ud800b\\u0000c", "range": "\\udfff"}\n'
    (ap / "logs" / "payload.3.jsonl").write_bytes(line)
    (rec,) = pilot_files.read_payload_log(ap, "payload.3.jsonl", 0)["records"]
    assert rec["msg"] == "a?b\x00c" and rec["range"] == "?"
    json.dumps(rec).encode()  # no lone surrogate left


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "huge", "shrunk", "name", "logs-link"])
def test_unsafe_files_are_refused_with_the_reason(ap, tmp_path_factory, kind):
    other = tmp_path_factory.mktemp("outside") / "secret"
    other.write_bytes(record() + b"\n")
    path = ap / "logs" / "payload.2.jsonl"
    name, offset, reason = "payload.2.jsonl", 0, ""
    if kind == "symlink":
        os.symlink(other, path)
        reason = "payload.2.jsonl is a symbolic link"
    elif kind == "hardlink":
        os.link(other, path)
        reason = "2 hard links"
    elif kind == "fifo":
        os.mkfifo(path)
        reason = "a FIFO, not a regular file"
    elif kind == "huge":
        with open(path, "wb") as fh:
            fh.truncate(pilot_files.PAYLOG_CAP + 1)
        reason = "over the cap"
    elif kind == "shrunk":
        path.write_bytes(record() + b"\n")
        offset, reason = 10_000, "shorter than the 10000 already read"
    elif kind == "name":
        name, reason = "../secret", "not a payload log name"
    else:
        os.rmdir(ap / "logs")
        os.symlink(other.parent, ap / "logs")
        reason = "logs is a symbolic link"
        with pytest.raises(Unreadable, match="logs: a symbolic link"):
            pilot_files.payload_logs(ap)
        reason = "logs is a symbolic link"
        os.symlink(other, other.parent / "payload.2.jsonl")
    with pytest.raises(Unreadable) as info:
        pilot_files.read_payload_log(ap, name, offset)
    assert reason in str(info.value), info.value
