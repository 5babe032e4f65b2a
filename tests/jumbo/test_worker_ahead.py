"""A rank's work loop (jumbo.worker.Worker) without MPI: fed through a LocalChannel by the test acting as the
dispatcher, with a real payload child. Several ranges wait in the child's hands; how many, and that a child dying
with them queued loses none and runs none twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from jumbo.channel import LocalChannel
from jumbo.execute import PayloadRunner
from jumbo.worker import AHEAD_BUDGET, LATENCY_BUDGET, MAX_AHEAD, Worker


def worker(tmp_path: Path, runner=None, payload: dict | None = None) -> tuple[Worker, LocalChannel]:
    channel = LocalChannel()
    job = {"PandaID": 1, "taskID": 9, "payload": payload or {"callable": "jumbo.payloads:noop", "output": False}}
    w = Worker(channel, 0, tmp_path / "ap", {1: job}, runner, 0, None, threading.Event())
    return w, channel


def test_the_child_holds_ahead_budget_of_work_and_one_more_per_late_hand_over_up_to_the_latency_budget(tmp_path):
    w, _ = worker(tmp_path)
    assert w._ahead_limit() == 1  # no range timed yet
    w.timer.add(0.012)
    base = int(AHEAD_BUDGET / 0.012)
    assert w._ahead_limit() == base == 2
    w.ahead_extra = 3
    assert w._ahead_limit() == base + 3
    w.ahead_extra = 100
    assert w._ahead_limit() == min(MAX_AHEAD, int(LATENCY_BUDGET / 0.012)) == 8
    slow, _ = worker(tmp_path)
    slow.timer.add(0.5)
    slow.ahead_extra = 5
    assert slow._ahead_limit() == 1  # long ranges: one in hand, never more than the latency budget allows


def test_a_child_killed_with_several_ranges_in_its_hands_loses_none_and_runs_none_twice(tmp_path):
    """2 ms ranges: the child holds up to MAX_AHEAD of them; it kills itself on events 20 and 45. The ranges queued
    behind go to a new child in order: each range is reported once, the two killed ones failed, the rest finished
    with their output."""
    runner = PayloadRunner(0, tmp_path / "payload.log")
    payload = {
        "callable": "jumbo.payloads:fail",
        "args": {"fail_events": [20, 45], "mode": "kill", "then": "jumbo.payloads:sleep", "seconds_per_event": 0.002},
    }
    w, channel = worker(tmp_path, runner, payload)
    thread = threading.Thread(target=w.run)
    thread.start()
    tasks = [{"pid": 1, "range": {"eventRangeID": f"r{i}", "startEvent": i, "lastEvent": i}} for i in range(80)]
    channel.down.put({"kind": "ranges", "tasks": tasks})
    results: list[dict] = []
    metrics: dict = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = channel.up.get(timeout=deadline - time.monotonic())
        results += msg.get("results", [])
        if len(results) == len(tasks):
            channel.down.put({"kind": "stop"})
        if msg["kind"] == "bye":
            metrics = msg["metrics"]
            break
    thread.join(10)
    runner.close()
    assert Counter(r["eventRangeID"] for r in results) == Counter(t["range"]["eventRangeID"] for t in tasks)
    failed = sorted(r["startEvent"] for r in results if r["eventStatus"] == "failed")
    assert failed == [20, 45], [r for r in results if r["eventStatus"] != "finished"]
    for r in results:
        if r["eventStatus"] == "finished":
            assert Path(r["path"]).read_text() == f"{r['startEvent']} {r['lastEvent']}\n"
    # the child did hold several ranges at a time (the limit at the end follows the pace of the last ranges, which
    # the two restarts and a loaded machine can slow past AHEAD_BUDGET / 2: CI saw 1 there)
    assert metrics["childRestarts"] == 2 and metrics["aheadLimitPeak"] >= 2, metrics
