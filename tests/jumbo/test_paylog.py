"""Structured payload logs (jumbo.paylog) under real mpirun: each rank's payload stdout/stderr as tagged JSON lines,
for callables in a worker child, fresh processes and commands, bounded per rank."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from jumbo import paylog

pytestmark = pytest.mark.mpi


def records(ap: Path) -> list[dict]:
    out = []
    for path in sorted((ap / "logs").glob("payload.*.jsonl")):
        rank = int(path.name.split(".")[1])
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            assert rec["rank"] == rank, (path, rec)
            out.append(rec)
    return out


def chatty_job(panda_id: int = 1001, task_id: int = 77, isolation: str = "worker", **args) -> dict:
    payload = {
        "callable": "jumbo.payloads:chatty",
        "isolation": isolation,
        "args": {"seconds_per_event": 0.001, **args},
    }
    return {"PandaID": panda_id, "taskID": task_id, "jobsetID": 5, "payload": payload}


@pytest.mark.parametrize("isolation", ["worker", "process"])
def test_each_line_of_each_range_is_a_record_tagged_with_its_range(mpi, ap, h, isolation, monkeypatch):
    monkeypatch.setenv("HARVESTER_EDGE_WORKER_ID", "12")
    ranges = h.make_ranges(77, 1001, 12, per_range=3)
    h.write_spec(ap, [chatty_job(isolation=isolation)], n_ranges=4)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    assert len(harvester.by_status("finished")) == 12
    recs = records(ap)
    ran_on = {s["eventRangeID"]: s["rank"] for s in harvester.statuses}
    by_range = Counter((r["range"], r["stream"]) for r in recs)
    for rng in ranges:
        rid = rng["eventRangeID"]
        assert by_range[(rid, "stdout")] == 3 and by_range[(rid, "stderr")] == 3, (rid, by_range)
    for r in recs:
        assert r["msg"].endswith(f"range {r['range']}") or f"range {r['range']} " in r["msg"], r  # its own range
        assert (r["task"], r["job"], r["worker"]) == (77, 1001, 12)
        assert r["rank"] == ran_on[r["range"]]
        assert r["msg"].startswith("out " if r["stream"] == "stdout" else "err ")
        assert isinstance(r["time"], float)


def test_a_command_payload_is_logged_too(mpi, ap, h):
    script = (
        "import sys; print('cmd out', sys.argv[1]); print('cmd err', sys.argv[1], file=sys.stderr);"
        "open(sys.argv[2], 'w').write('x')"
    )
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"command": [sys.executable, "-c", script, "{first_event}", "{output}"]},
    }
    ranges = h.make_ranges(77, 1001, 4, per_range=2)
    h.write_spec(ap, [job], n_ranges=4)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    assert len(harvester.by_status("finished")) == 4
    got = {(r["range"], r["stream"], r["msg"]) for r in records(ap)}
    for rng in ranges:
        rid, first = rng["eventRangeID"], rng["startEvent"]
        assert (rid, "stdout", f"cmd out {first}") in got
        assert (rid, "stderr", f"cmd err {first}") in got


def test_a_chatty_payload_stops_at_the_bound_with_a_truncation_mark(mpi, ap, h):
    ranges = h.make_ranges(77, 1001, 20, per_range=10)
    h.write_spec(ap, [chatty_job(lines=20, pad=400)], n_ranges=4, payload_log_max_mb=0.05)  # 52 KB per rank
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    assert len(harvester.by_status("finished")) == 20  # the payload went on; only its output was dropped
    limit = int(0.05 * 1024 * 1024)
    for rank in (0, 1):
        path = ap / "logs" / paylog.FILE.format(rank=rank)
        lines = path.read_text().splitlines()
        last = json.loads(lines[-1])
        assert last["stream"] == "meta" and last["truncated"] is True, last
        assert os.path.getsize(path) <= limit + len(lines[-1]) + 1
        assert sum(1 for line in lines if '"truncated": true' in line) == 1
