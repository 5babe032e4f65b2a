"""A rank's results of short ranges travel together (jumbo.worker REPORT_WINDOW): fewer messages to rank 0, every
range still reported once, only after its output was written, and long or failed ranges reported at once. The
rank runs without MPI, fed through a LocalChannel by the test acting as the dispatcher (credits as asked)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from jumbo.channel import LocalChannel
from jumbo.execute import PayloadRunner
from jumbo.worker import LATENCY_BUDGET, REPORT_WINDOW, Worker

SYNCED: dict[str, float] = {}  # output path -> when the runner's fsync of it returned


class RecordingRunner(PayloadRunner):
    def sync_outputs(self, paths: list[str]) -> dict[str, OSError]:
        errors = super().sync_outputs(paths)
        SYNCED.update(dict.fromkeys(paths, time.time()))
        return errors


def run_ranks_loop(tmp_path: Path, payload: dict, n: int) -> tuple[list[dict], dict]:
    """Hand out ``n`` one-event ranges as the rank asks for them; the messages it sent up (with their arrival
    time) and its final metrics."""
    runner = RecordingRunner(0, tmp_path / "payload.log")
    channel = LocalChannel()
    job = {"PandaID": 1, "taskID": 9, "payload": payload}
    w = Worker(channel, 0, tmp_path / "ap", {1: job}, runner, 0, None, threading.Event())
    thread = threading.Thread(target=w.run)
    thread.start()
    tasks = [{"pid": 1, "range": {"eventRangeID": f"r{i}", "startEvent": i, "lastEvent": i}} for i in range(n)]
    messages: list[dict] = []
    reported = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            msg = channel.up.get(timeout=deadline - time.monotonic())
            messages.append({**msg, "received": time.time()})
            reported += len(msg.get("results", []))
            if msg["kind"] == "bye":
                break
            if msg.get("want"):
                give, tasks = tasks[: msg["want"]], tasks[msg["want"] :]
                if give:
                    channel.down.put({"kind": "ranges", "tasks": give})
            if reported == n:
                channel.down.put({"kind": "stop"})
    finally:
        thread.join(10)
        runner.close()
    return messages, messages[-1]["metrics"]


def results_of(messages: list[dict]) -> list[dict]:
    return [r for m in messages for r in m.get("results", [])]


def test_short_ranges_are_reported_several_per_message_once_each_after_their_output(tmp_path):
    n = 90
    sleep = {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.005}}
    messages, metrics = run_ranks_loop(tmp_path, sleep, n)
    results = results_of(messages)
    assert Counter(r["eventRangeID"] for r in results) == Counter(f"r{i}" for i in range(n))  # exactly once
    assert all(r["eventStatus"] == "finished" for r in results)
    for r in results:  # the output was complete (and fsynced) before the result left the rank
        assert Path(r["path"]).read_text() == f"{r['startEvent']} {r['lastEvent']}\n"
        assert r["fsize"] == len(f"{r['startEvent']} {r['lastEvent']}\n")
    for m in messages:
        for r in m.get("results", []):
            assert SYNCED[r["path"]] <= m["received"], r
    sent = [m for m in messages if m["kind"] == "result"]
    assert len(sent) <= 0.6 * n, len(sent)  # several results per message
    # a held result waits for the next ones at most REPORT_WINDOW (slack for a loaded machine)
    for m in sent:
        assert m["results"][-2 if len(m["results"]) > 1 else -1]["endTime"] - m["results"][0]["endTime"] < (
            REPORT_WINDOW + 0.05
        ), m["results"]
    # the rank held more work for it, within the latency budget
    assert metrics["queueDepth"] >= 3 and metrics["queueDepth"] * metrics["meanRangeTime"] < LATENCY_BUDGET, metrics


def test_ranges_as_long_as_the_window_are_reported_one_per_message(tmp_path):
    sleep = {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": REPORT_WINDOW + 0.01}}
    messages, _ = run_ranks_loop(tmp_path, sleep, 8)
    sent = [m for m in messages if m["kind"] == "result"]
    assert [len(m["results"]) for m in sent] == [1] * 8


def test_a_failed_range_goes_up_at_once_with_those_held_before_it(tmp_path):
    payload = {
        "callable": "jumbo.payloads:fail",
        "args": {"fail_events": [30], "then": "jumbo.payloads:sleep", "seconds_per_event": 0.005},
    }
    messages, _ = run_ranks_loop(tmp_path, payload, 60)
    results = results_of(messages)
    assert Counter(r["eventRangeID"] for r in results) == Counter(f"r{i}" for i in range(60))
    carrying = [m for m in messages if any(r["eventStatus"] == "failed" for r in m.get("results", []))]
    assert len(carrying) == 1 and carrying[0]["results"][-1]["startEvent"] == 30, carrying


def test_a_finished_range_whose_output_cannot_be_fsynced_is_reported_failed_without_it(tmp_path):
    """The rank fsyncs the outputs of the results it is about to send; one that fails (EIO) turns its range into a
    failed one (CODE_NO_OUTPUT), the output is removed, the others stay finished."""
    import errno

    from jumbo.execute import CODE_NO_OUTPUT

    class FailingRunner(PayloadRunner):
        def sync_outputs(self, paths: list[str]) -> dict[str, OSError]:
            return {p: OSError(errno.EIO, "I/O error") for p in paths if p.endswith("r1.out")}

    channel = LocalChannel()
    job = {"PandaID": 1, "taskID": 9, "payload": {"callable": "jumbo.payloads:sleep"}}
    w = Worker(channel, 0, tmp_path, {1: job}, FailingRunner(0), 0, None, threading.Event())
    results = []
    for i in range(3):
        out = tmp_path / f"r{i}.out"
        out.write_text("x\n")
        results.append({"eventRangeID": f"r{i}", "eventStatus": "finished", "path": str(out), "fsize": 2})
        w.counts["finished"] += 1
    synced = w._synced(results)
    assert [r["eventStatus"] for r in synced] == ["finished", "failed", "finished"]
    assert synced[1]["errorCode"] == CODE_NO_OUTPUT and "path" not in synced[1] and "fsize" not in synced[1]
    assert not (tmp_path / "r1.out").exists() and (tmp_path / "r0.out").exists()
    assert w.counts["finished"] == 2 and w.counts["failed"] == 1


def test_sync_outputs_fsyncs_several_at_once_and_names_the_files_it_could_not(tmp_path):
    runner = PayloadRunner(0)
    paths = [str(tmp_path / f"{i}.out") for i in range(5)]
    for p in paths[:4]:
        Path(p).write_text("x")
    try:
        errors = runner.sync_outputs(paths)
    finally:
        runner.close()
    assert set(errors) == {paths[4]} and isinstance(errors[paths[4]], FileNotFoundError)
    assert PayloadRunner(0, fsync_outputs=False).sync_outputs(paths) == {}  # --no-fsync
