"""A batch system tearing a pilot's step down (scancel, a lost rank, the time limit) kills the payloads too: the
ranges they held were not at fault and go back not-done, never as payload failures that use up attempts. The
teardown is done as Slurm's step teardown does it (SIGTERM to every process of the step, KillWait, then SIGKILL),
by hand on a real mpirun pilot, so this runs without Slurm."""

from __future__ import annotations

import signal
import time
from collections import Counter

import psutil
import pytest

from helpers import wait_for
from jumbo import protocol

pytestmark = pytest.mark.mpi


def step_processes(mpirun: psutil.Process) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(ranks, payload children) under mpirun: a payload child is a jumbo process whose parent is a rank."""
    jumbo = [p for p in mpirun.children(recursive=True) if "jumbo" in " ".join(p.cmdline())]
    pids = {p.pid for p in jumbo}
    children = [p for p in jumbo if p.ppid() in pids]
    return [p for p in jumbo if p not in children], children


def test_payloads_killed_by_the_step_teardown_are_not_done_not_failed(mpi, ap, h):
    ranges = h.make_ranges(77, 1001, 12, per_range=10)
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.3}},
    }  # 3 s per range
    h.write_spec(ap, [job], n_ranges=4, prefetch=0)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        mpirun = psutil.Process(pilot.proc.pid)
        wait_for(lambda: len(harvester.by_status("finished")) >= 2, what="first finished ranges")
        time.sleep(0.5)  # both ranks are inside their next range
        ranks, children = step_processes(mpirun)
        assert len(ranks) == 2 and len(children) >= 2, (ranks, children)
        for proc in ranks + children:  # slurmstepd: SIGTERM to every task's processes...
            proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # ... KillWait (the payload children ignore SIGTERM, the ranks drain) ...
        for proc in children:  # ... then SIGKILL: the payloads die mid-range
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        assert pilot.wait(60) == 0, pilot.output()
    assert not harvester.by_status("failed"), harvester.by_status("failed")
    killed = [s for s in harvester.by_status("not-done") if "teardown" in s["errorDiag"]]
    assert len(killed) >= 2, (harvester.statuses, pilot.output())  # the ranges in the killed payloads' hands
    assert all("SIGKILL" in s["errorDiag"] and s["errorCode"] == 0 for s in killed), killed
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids.values()) == {1}  # each range reported once
    attrs = protocol.read_worker_attributes(ap)
    assert "drain" in attrs["endReason"] and attrs["jobs"]["1001"]["nRangesFailed"] == 0


def test_a_payload_killed_alone_is_still_a_failure(mpi, ap, h):
    """No teardown signal reached the rank within the grace: the payload's own death (OOM killer, its own
    signal) is a failure of the range, which uses up an attempt."""
    ranges = h.make_ranges(77, 1001, 4, per_range=5)
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"callable": "jumbo.payloads:fail", "args": {**h.SIM_ARGS, "fail_events": [7], "mode": "kill"}},
    }
    h.write_spec(ap, [job], n_ranges=4)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 1)
        assert pilot.wait() == 0, pilot.output()
    failed = harvester.by_status("failed")
    assert [(s["startEvent"], s["errorCode"]) for s in failed] == [(5, 137)], harvester.statuses
    assert "teardown" not in failed[0]["errorDiag"]
    assert len(harvester.by_status("finished")) == 3 and not harvester.by_status("not-done")
