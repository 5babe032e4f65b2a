"""Payloads and their supervised execution (jumbo.payloads, jumbo.execute): real child processes, no MPI."""

from __future__ import annotations

import sys
import time
import zlib

import numpy as np
import psutil
import pytest

from jumbo import payloads
from jumbo.execute import CODE_LOOPING, CODE_NO_OUTPUT, PayloadRunner, render_command

ARGS = {"size": 500, "rounds": 3}


def ctx(args=None, task_id=77):
    return {"task_id": task_id, "panda_id": 1, "rank": 0, "seed": 1, "event_range_id": "r", "args": args or ARGS}


def test_simulation_depends_only_on_task_and_event(tmp_path):
    out = tmp_path / "a.npy"
    payloads.simulate(10, 14, str(out), ctx())
    data = np.load(out)
    assert data.shape == (5, payloads.COLUMNS)
    assert np.array_equal(data[2], payloads.expected(77, 12, **ARGS))  # same event, computed alone
    assert not np.array_equal(data[2], payloads.expected(78, 12, **ARGS))  # another task differs
    assert payloads.verify(str(out), 77, 10, 14, ARGS)
    assert not payloads.verify(str(out), 77, 11, 15, ARGS)


@pytest.fixture
def runner(tmp_path):
    r = PayloadRunner(rank=0, log_path=tmp_path / "payload.log")
    yield r
    r.close()


def test_worker_child_runs_ranges_and_checksums(runner, tmp_path):
    out = tmp_path / "r1.npy"
    outcome = runner.run({"callable": "jumbo.payloads:simulate", "args": ARGS}, 0, 9, str(out), ctx(), None)
    assert outcome.status == "finished" and outcome.code == 0
    data = out.read_bytes()
    assert outcome.fsize == len(data) and outcome.adler32 == f"{zlib.adler32(data):08x}"
    assert payloads.verify(str(out), 77, 0, 9, ARGS)


@pytest.mark.parametrize(
    "mode, code, text",
    [
        ("raise", 42, "event 5 fails on purpose"),
        ("exit", 42, "exited with code 42"),
        ("kill", 128 + 9, "killed by SIGKILL"),
        ("segfault", 128 + 11, "killed by SIGSEGV"),
    ],
)
def test_payload_failure_is_reported_and_the_rank_goes_on(runner, tmp_path, mode, code, text):
    payload = {"callable": "jumbo.payloads:fail", "args": {**ARGS, "fail_events": [5], "code": 42, "mode": mode}}
    bad = runner.run(payload, 0, 9, str(tmp_path / "bad"), ctx(payload["args"]), None)
    assert (bad.status, bad.code) == ("failed", code) and text in bad.message
    good = runner.run(payload, 10, 19, str(tmp_path / "good"), ctx(payload["args"]), None)
    assert good.status == "finished"  # a new child replaced a dead one
    assert payloads.verify(str(tmp_path / "good"), 77, 10, 19, ARGS)
    assert runner.restarts == (1 if mode in ("exit", "kill", "segfault") else 0)


def test_deadline_kills_the_payload_and_reports_not_done(runner, tmp_path):
    payload = {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 1.0}}
    t0 = time.time()
    outcome = runner.run(payload, 0, 9, str(tmp_path / "slow"), ctx(payload["args"]), deadline=t0 + 0.5)
    assert outcome.status == "not-done" and time.time() - t0 < 5
    assert runner._children == {}  # the payload's child is gone (killed and reaped), not left sleeping


def test_missing_output_is_a_failure(runner, tmp_path):
    outcome = runner.run(
        {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0}},
        0,
        0,
        str(tmp_path / "nodir" / "x"),
        ctx(),
        None,
    )
    assert outcome.status == "failed"  # sleep cannot write into a missing directory
    outcome = runner.run({"command": [sys.executable, "-c", "pass"]}, 0, 0, str(tmp_path / "none"), ctx(), None)
    assert (outcome.status, outcome.code) == ("failed", CODE_NO_OUTPUT)


def test_sleep_payload_without_write_is_a_pure_event(runner, tmp_path):
    payload = {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.05, "write": False}, "output": False}
    t0 = time.time()
    outcome = runner.run(payload, 0, 1, str(tmp_path / "pure"), ctx(payload["args"]), None)
    assert outcome.status == "finished" and time.time() - t0 >= 0.1  # two events of 50 ms each
    assert not (tmp_path / "pure").exists()  # nothing written: the bench's pure 10 ms event


def test_command_template(runner, tmp_path):
    argv = render_command(
        "prog --from {first_event} --to {last_event} -o '{output}' --seed {seed} --rank {rank}",
        first_event=3,
        last_event=7,
        output="/a b/c",
        seed=9,
        rank=2,
    )
    assert argv == ["prog", "--from", "3", "--to", "7", "-o", "/a b/c", "--seed", "9", "--rank", "2"]
    code = "import sys; open(sys.argv[3], 'w').write(sys.argv[1] + '-' + sys.argv[2])"
    payload = {"command": [sys.executable, "-c", code, "{first_event}", "{last_event}", "{output}"]}
    outcome = runner.run(payload, 3, 7, str(tmp_path / "cmd.out"), ctx(), None)
    assert outcome.status == "finished" and (tmp_path / "cmd.out").read_text() == "3-7"
    failing = runner.run(
        {"command": [sys.executable, "-c", "raise SystemExit(3)"]}, 0, 0, str(tmp_path / "f"), ctx(), None
    )
    assert (failing.status, failing.code) == ("failed", 3)


def test_process_isolation_starts_a_child_per_range(runner, tmp_path):
    payload = {"callable": "jumbo.payloads:noop", "isolation": "process", "args": {"touch": True}}
    for i in range(2):
        assert runner.run(payload, i, i, str(tmp_path / f"n{i}"), ctx(payload["args"]), None).status == "finished"
        assert runner._children == {}


def test_inline_isolation_and_payloads_without_output(runner, tmp_path):
    payload = {"callable": "jumbo.payloads:noop", "isolation": "inline", "output": False}
    outcome = runner.run(payload, 0, 0, str(tmp_path / "none"), ctx(), None)
    assert outcome.status == "finished" and outcome.fsize == 0 and not (tmp_path / "none").exists()
    assert runner._children == {}  # no child process
    payload = {"callable": "jumbo.payloads:noop", "isolation": "inline"}  # output expected but none written
    assert runner.run(payload, 0, 0, str(tmp_path / "none"), ctx(), None).code == CODE_NO_OUTPUT
    failing = {"callable": "jumbo.payloads:fail", "isolation": "inline", "args": {"fail_events": [0], "code": 7}}
    outcome = runner.run(failing, 0, 0, str(tmp_path / "f"), ctx(failing["args"]), None)
    assert (outcome.status, outcome.code) == ("failed", 7)


def test_pipelined_ranges_survive_a_child_death(runner, tmp_path):
    """The next range waits in the child's input; when the child dies on the current one, the next is handed
    to a new child (before any later range) and runs exactly once."""
    payload = {"callable": "jumbo.payloads:fail", "args": {**ARGS, "fail_events": [0], "mode": "kill"}}
    c = ctx(payload["args"])
    out = [str(tmp_path / f"r{i}") for i in range(3)]
    a = runner.submit(payload, 0, 4, out[0], c)
    b = runner.submit(payload, 5, 9, out[1], c)  # queued in the same child behind a
    assert runner.started(b)
    assert runner.collect(a, None).code == 128 + 9
    assert not runner.started(b)  # handed back: its child is gone
    runner.hand(b)
    d = runner.submit(payload, 10, 14, out[2], c)
    assert runner.collect(b, None).status == "finished" and runner.collect(d, None).status == "finished"
    assert payloads.verify(out[1], 77, 5, 9, ARGS) and payloads.verify(out[2], 77, 10, 14, ARGS)
    assert runner.restarts == 1


def test_pipelined_answers_that_arrive_together_are_both_read(runner, tmp_path):
    """Both ranges finish before the first answer is read, so the two answers sit in the pipe together. Collecting
    with a deadline must take the second from the buffer at once, not wait (select) for bytes that were already
    read: that once held a range until the walltime."""
    payload = {"callable": "jumbo.payloads:simulate", "args": {"size": 10, "rounds": 1}}
    c = ctx(payload["args"])
    out = [str(tmp_path / f"p{i}") for i in range(2)]
    a = runner.submit(payload, 0, 1, out[0], c)
    b = runner.submit(payload, 2, 3, out[1], c)
    time.sleep(1.0)  # both answers are written by now
    assert runner.collect(a, time.time() + 30).status == "finished"
    started = time.monotonic()
    assert runner.collect(b, time.time() + 30).status == "finished"
    assert time.monotonic() - started < 10, "the second answer was already read but not seen"


@pytest.fixture
def watched(tmp_path):
    """A runner whose payloads count as looping after 1 s without output or CPU progress."""
    r = PayloadRunner(rank=0, log_path=tmp_path / "payload.log", looping_timeout=1.0)
    yield r
    r.close()


@pytest.mark.parametrize("isolation", ["worker", "process"])
def test_a_looping_callable_is_killed_with_its_own_code(watched, tmp_path, isolation):
    payload = {
        "callable": "jumbo.payloads:fail",
        "isolation": isolation,
        "args": {**ARGS, "fail_events": [5], "mode": "hang"},
    }
    started = time.monotonic()
    hung = watched.run(payload, 0, 9, str(tmp_path / "hung"), ctx(payload["args"]), time.time() + 120)
    assert (hung.status, hung.code) == ("failed", CODE_LOOPING) and "looping" in hung.message
    assert time.monotonic() - started < 60  # killed by the looping check, long before the deadline
    fine = watched.run(payload, 10, 14, str(tmp_path / "fine.npy"), ctx(payload["args"]), None)
    assert fine.status == "finished"  # a new child takes the next range


def test_a_looping_command_and_what_it_started_are_killed(watched, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    payload = {"command": ["sh", "-c", f"sleep 600 & echo $! > {pidfile}; wait"], "output": False}
    hung = watched.run(payload, 0, 9, str(tmp_path / "out"), ctx(), time.time() + 120)
    assert (hung.status, hung.code) == ("failed", CODE_LOOPING)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the command's child survived"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "busy",
    [
        "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done",  # CPU, no output
        "for i in $(seq 30); do echo tick; sleep 0.1; done",  # output, no CPU to speak of
    ],
)
def test_a_payload_that_makes_progress_is_not_looping(watched, tmp_path, busy):
    payload = {"command": ["sh", "-c", busy], "output": False}
    started = time.monotonic()
    outcome = watched.run(payload, 0, 9, str(tmp_path / "out"), ctx(), time.time() + 120)
    assert outcome.status == "finished", outcome
    assert time.monotonic() - started > 1.0  # it ran past the looping timeout
