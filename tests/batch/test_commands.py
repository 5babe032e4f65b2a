"""The subprocess seam: real processes, timeouts that kill the whole tree, recording and replay."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from doubles import ListTrace
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.replay.recorder import RecordingRunner
from harvester_edge.seams.commands import CommandNotFound, CommandResult, CommandRunner, RecordedRunner, ReplayMismatch


def test_captures_output_exit_code_and_duration():
    res = CommandRunner().run(["bash", "-c", "echo out; echo err >&2; exit 3"])
    assert (res.stdout, res.stderr, res.returncode, res.timed_out) == ("out\n", "err\n", 3, False)
    assert res.argv == ("bash", "-c", "echo out; echo err >&2; exit 3")
    assert 0 < res.duration < 10 and not res.ok


def test_stdin_env_and_cwd(tmp_path):
    res = CommandRunner(env={"HE_TEST_VAR": "x y"}).run(
        ["bash", "-c", 'cat; echo "$HE_TEST_VAR"; pwd'], stdin="hello\n", cwd=str(tmp_path)
    )
    assert res.stdout.splitlines() == ["hello", "x y", str(tmp_path)]
    assert res.stdin == "hello\n" and res.ok


def test_missing_executable_raises_command_not_found():
    with pytest.raises(CommandNotFound) as err:
        CommandRunner().run(["he-no-such-command-xyz"])
    assert isinstance(err.value, HarvesterEdgeError) and isinstance(err.value, FileNotFoundError)
    assert "he-no-such-command-xyz" in str(err.value)


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    res = CommandRunner().run(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert res.timed_out and res.returncode == -9
    assert time.monotonic() - start < 5
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    alive = psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
    assert not alive, "the grandchild (sleep) survived the timeout"


def test_a_short_timeout_fires_on_time_behind_longer_ones_and_finished_commands_are_left_alone():
    """The deadlines share one thread: a short one registered while a long one waits must still fire on time, and
    a command that ended before its deadline is never killed (its process group may be someone else's by then)."""
    runner = CommandRunner()
    results = {}
    slow = threading.Thread(target=lambda: results.update(slow=runner.run(["sleep", "2"], timeout=30)))
    slow.start()
    time.sleep(0.2)
    for _ in range(20):  # finished well before their 0.5 s deadlines, which pass while the next ones run
        assert not runner.run(["true"], timeout=0.5).timed_out
    start = time.monotonic()
    short = runner.run(["sleep", "30"], timeout=0.3)
    assert short.timed_out and short.returncode == -9 and time.monotonic() - start < 2
    time.sleep(0.6)  # past the deadlines of the 20 finished ones
    slow.join()
    assert (results["slow"].returncode, results["slow"].timed_out) == (0, False)


def test_exit_is_awaited_without_polling(monkeypatch):
    """Popen.wait(timeout=...) polls the exit with sleeps of 1, 2, 4 ... ms: a few ms per sbatch for nothing
    (issue 15). The runner waits without a timeout; one shared thread kills the process groups past their timeout."""
    import subprocess

    timeouts = []
    real_wait = subprocess.Popen.wait

    def spy(self, timeout=None):
        timeouts.append(timeout)
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", spy)
    for _ in range(5):
        res = CommandRunner().run(["bash", "-c", "echo out; sleep 0.01"], timeout=30)
        assert (res.stdout, res.returncode, res.timed_out) == ("out\n", 0, False)
    assert timeouts and all(t is None for t in timeouts), timeouts


def test_recording_sees_every_result_and_round_trips():
    trace = ListTrace()
    runner = RecordingRunner(CommandRunner(), trace)
    runner.run(["true"])
    failed = runner.run(["false"])
    assert [(r["kind"], r["returncode"]) for r in trace.records] == [("command", 0), ("command", 1)]
    assert CommandResult.from_dict(trace.records[1]) == failed


def test_recorded_runner_serves_results_in_order_and_checks_argv():
    runner = RecordedRunner(
        [{"argv": ["squeue", "..."], "stdout": "1|RUNNING\n"}, CommandResult(("sbatch", "x"), None, "", "boom", 1, 0.1)]
    )
    assert runner.run(["squeue", "-h", "-j", "1"]).stdout == "1|RUNNING\n"
    with pytest.raises(ReplayMismatch):
        runner.run(["sbatch", "y"])
    assert runner.remaining == 0
    with pytest.raises(ReplayMismatch):
        runner.run(["anything"])
    assert [c[0][0] for c in runner.calls] == ["squeue", "sbatch", "anything"]


def test_failures_log_stderr_at_error_unless_expected(caplog):
    import logging

    with caplog.at_level(logging.DEBUG, logger="harvester_edge.seams.commands"):
        CommandRunner().run(["bash", "-c", "echo boom-one >&2; exit 1"])
        CommandRunner().run(["bash", "-c", "echo boom-two >&2; exit 1"], failure_expected=True)
    levels = {
        r.getMessage().split(": ")[-1]: r.levelname for r in caplog.records if "failed (exit 1)" in r.getMessage()
    }
    assert levels == {"boom-one": "ERROR", "boom-two": "DEBUG"}


def test_a_forked_child_gets_its_own_deadline_thread():
    """The deadline thread stays in the parent at a fork: the child's first command starts one of its own, so its
    timeouts still fire."""
    import os

    CommandRunner().run(["true"], timeout=5)  # the parent's thread runs
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its timeout fired
        res = CommandRunner().run(["sleep", "30"], timeout=0.3)
        os._exit(0 if res.timed_out else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
