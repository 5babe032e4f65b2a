"""The pilot under real mpirun, fed by a real harvester side (jumbo.protocol on a thread)."""

from __future__ import annotations

import os
import signal
import zlib
from collections import Counter
from pathlib import Path

import pytest

from helpers import wait_for
from jumbo import protocol
from jumbo.execute import CODE_LOOPING

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_every_event_exactly_once_and_verified(mpi, ap, h, ranks):
    ranges = h.make_ranges(77, 1001, 24, per_range=5)
    h.write_spec(ap, [h.sim_job()], prefetch=1, n_ranges=4)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, ranks)
        assert pilot.wait() == 0, pilot.output()
    finished = harvester.by_status("finished")
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids) == {r["eventRangeID"] for r in ranges} and set(ids.values()) == {1}  # exactly once
    assert len(finished) == len(ranges)
    h.check_finished(finished, 77)
    assert harvester.requests >= 2  # ranges came through several request/answer rounds
    if ranks > 1:
        assert len({s["rank"] for s in finished}) > 1  # work was spread, rank 0 included or not
    assert any(s["rank"] == 0 for s in finished)  # rank 0 processes ranges too

    attrs = protocol.read_worker_attributes(ap)
    job = attrs["jobs"]["1001"]
    assert attrs["workerStatus"] == "finished" and attrs["endReason"] == "no more ranges"
    assert job["nEventsFinished"] == 120 and job["nEventsFailed"] == job["nEventsNotDone"] == 0
    manifest = protocol.read_json(job["manifest"])
    assert [f["startEvent"] for f in manifest["files"]] == [r["startEvent"] for r in ranges]
    report = protocol.read_job_report(ap)
    assert report["ranks"] == ranks and set(report["perRank"]) == {str(r) for r in range(ranks)}
    assert all(m["maxRSS"] > 0 and m["maxPSS"] > 0 for m in report["perRank"].values())
    assert report["cpuTime"] > 0
    monitor = protocol.read_monitor(ap)
    assert set(monitor) == set(range(ranks)) and all(samples for samples in monitor.values())
    assert protocol.read_heartbeat(ap)["state"] == "finished"


def test_payload_failures_and_killed_children(mpi, ap, h):
    """Ranges whose payload raises, exits, is SIGKILLed or segfaults are reported failed; the ranks go on."""
    ranges = h.make_ranges(77, 1001, 12, per_range=5)
    jobs = [
        h.sim_job(callable="jumbo.payloads:fail", args={**h.SIM_ARGS, "fail_events": [7], "code": 42, "mode": "raise"}),
        h.sim_job(
            panda_id=1002, callable="jumbo.payloads:fail", args={**h.SIM_ARGS, "fail_events": [12], "mode": "kill"}
        ),
        h.sim_job(
            panda_id=1003, callable="jumbo.payloads:fail", args={**h.SIM_ARGS, "fail_events": [27], "mode": "segfault"}
        ),
    ]
    feed = {1001: ranges, 1002: h.make_ranges(77, 1002, 12, 5), 1003: h.make_ranges(77, 1003, 12, 5)}
    h.write_spec(ap, jobs, n_ranges=4)
    with h.Harvester(ap, feed) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    failed = {(s["PandaID"], s["startEvent"]): s for s in harvester.by_status("failed")}
    assert set(failed) == {(1001, 5), (1002, 10), (1003, 25)}, (failed, pilot.output())
    assert failed[(1001, 5)]["errorCode"] == 42 and "fails on purpose" in failed[(1001, 5)]["errorDiag"]
    assert failed[(1002, 10)]["errorCode"] == 137 and "SIGKILL" in failed[(1002, 10)]["errorDiag"]
    assert failed[(1003, 25)]["errorCode"] == 139 and "SIGSEGV" in failed[(1003, 25)]["errorDiag"]
    assert all(not os.path.exists(ap / "outputs" / str(p) / f"{s['eventRangeID']}.npy") for (p, _), s in failed.items())
    finished = harvester.by_status("finished")
    assert len(finished) == 36 - 3 and not harvester.by_status("not-done")
    h.check_finished(finished, 77)
    report = protocol.read_job_report(ap)
    assert sum(m["childRestarts"] for m in report["perRank"].values()) == 2


def test_fine_grained_ranges_deepen_the_rank_queues_within_the_budget(mpi, ap, h):
    """One 10 ms event per range, prefetch 0: a rank whose payload child had no next range in hand asks for more
    (its queue deepens), never beyond LATENCY_BUDGET seconds of work; every range is still reported exactly once."""
    from jumbo.worker import LATENCY_BUDGET

    ranges = h.make_ranges(77, 1001, 160, per_range=1)
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.01}},
    }
    h.write_spec(ap, [job], prefetch=0, n_ranges=40)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids) == {r["eventRangeID"] for r in ranges} and set(ids.values()) == {1}  # exactly once
    assert len(harvester.by_status("finished")) == len(ranges)
    check_sleep_outputs(harvester.by_status("finished"))
    per_rank = protocol.read_job_report(ap)["perRank"]
    depths = {rank: m["queueDepth"] for rank, m in per_rank.items()}
    assert max(depths.values()) >= 2, depths  # started at prefetch + 1 = 1 and deepened
    for rank, m in per_rank.items():  # a deeper queue only while it holds less than the budget
        assert (m["queueDepth"] - 1) * m["meanRangeTime"] < LATENCY_BUDGET, (rank, m)


UNEVEN_PAYLOAD = """
import time


def run(first_event, last_event, output_path, context):
    time.sleep(0.004 if context["rank"] == 2 else 0.04)  # ranks 0 and 1 are ten times slower than rank 2
    with open(output_path, "w") as fh:
        fh.write(f"{first_event} {last_event}\\n")
"""


def test_at_the_end_a_loaded_rank_gives_back_unstarted_ranges_exactly_once(mpi, ap, h, tmp_path):
    """Ranks 0 and 1 are ten times slower than rank 2 and hold deep queues (prefetch 8) when nothing is left to
    hand out: the dispatcher asks them to give back ranges they have not handed to their payload child (rank 0
    through its local channel, rank 1 over MPI), rank 2 runs them; every range is still run by one rank and
    reported once, finished, with its output."""
    (tmp_path / "uneven.py").write_text(UNEVEN_PAYLOAD)
    ranges = h.make_ranges(77, 1001, 120, per_range=1)
    job = {"PandaID": 1001, "taskID": 77, "payload": {"callable": "uneven:run"}}
    h.write_spec(ap, [job], prefetch=8, n_ranges=120)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 3, env=env)
        assert pilot.wait() == 0, pilot.output()
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids) == {r["eventRangeID"] for r in ranges} and set(ids.values()) == {1}  # exactly once
    finished = harvester.by_status("finished")
    assert len(finished) == len(ranges)
    check_sleep_outputs(finished)
    per_rank = protocol.read_job_report(ap)["perRank"]
    assert per_rank["0"]["givenBack"] + per_rank["1"]["givenBack"] >= 1, (per_rank, pilot.output()[-3000:])
    assert "gave back" in pilot.output()
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["jobs"]["1001"]["nRangesFinished"] == len(ranges) and attrs["endReason"] == "no more ranges"


def check_sleep_outputs(entries: list[dict]) -> None:
    for ev in entries:
        data = Path(ev["path"]).read_bytes()
        assert data == f"{ev['startEvent']} {ev['lastEvent']}\n".encode(), ev
        assert len(data) == ev["fsize"] and f"{zlib.adler32(data):08x}" == ev["adler32"], ev


def test_walltime_mid_run_then_the_rest_is_handed_out_again(mpi, ap, h):
    """End time in the middle: nothing finished that was not, the rest not-done; a second pilot finishes them.
    A sleep payload (0.1 s per range) keeps the timing independent of how busy the machine is."""
    ranges = h.make_ranges(77, 1001, 60, per_range=10)
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.01}},
    }
    h.write_spec(ap, [job], n_ranges=6, safety_margin=0.5)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2, args=("--end-time", "+3"))
        assert pilot.wait() == 0, pilot.output()
    first = list(harvester.statuses)
    done = {s["eventRangeID"] for s in first if s["eventStatus"] == "finished"}
    not_done = {s["eventRangeID"] for s in first if s["eventStatus"] == "not-done"}
    assert done and not_done and not harvester.by_status("failed")
    assert protocol.read_worker_attributes(ap)["endReason"].startswith("walltime")
    check_sleep_outputs([s for s in first if s["eventStatus"] == "finished"])
    for s in first:
        if s["eventStatus"] == "not-done":  # nothing left behind that could pass for a result
            assert not (ap / "outputs" / "1001" / f"{s['eventRangeID']}.out").exists()
    assert Counter(s["eventRangeID"] for s in first).most_common(1)[0][1] == 1

    # A new worker (its own access point) gets what is left: the not-done ranges, the ones never handed out, and
    # those the harvester answered after the pilot had stopped reading (a ranges file never consumed).
    unread = [r for answer in protocol.read_event_ranges(ap) for r in answer.ranges.get(1001, [])]
    ap2 = ap.parent / "ap2"
    ap2.mkdir()
    h.write_spec(ap2, [job], n_ranges=6)
    with h.Harvester(ap2, {1001: harvester.remaining[1001] + unread}) as second:
        pilot = h.PilotRun(ap2, 2)
        assert pilot.wait() == 0, pilot.output()
    again = {s["eventRangeID"] for s in second.by_status("finished")}
    assert not_done <= again and not (again & done), (second.statuses, pilot.output())
    assert done | again == {r["eventRangeID"] for r in ranges}
    check_sleep_outputs(second.by_status("finished"))


def test_malformed_ranges_file_is_set_aside_and_asked_again(mpi, ap, h):
    ranges = h.make_ranges(77, 1001, 8, per_range=5)
    h.write_spec(ap, [h.sim_job()], n_ranges=4)
    with h.Harvester(ap, {1001: ranges}, malformed_answers=1) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    assert len(harvester.by_status("finished")) == 8
    bad = sorted(p.name for p in ap.glob("JobsEventRanges.*.json.bad"))
    assert bad == ["JobsEventRanges.1.json.bad"]
    errors = protocol.read_worker_attributes(ap)["errors"]
    assert len(errors) == 1 and "JobsEventRanges.1.json" in errors[0] and "eventRangeID" in errors[0]


@pytest.mark.parametrize("how", ["SIGTERM to rank 0", "SIGUSR1 to mpirun", "kill_worker.json"])
def test_drain(mpi, ap, h, how):
    ranges = h.make_ranges(77, 1001, 60, per_range=10)
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.02}},
    }
    h.write_spec(ap, [job], n_ranges=8)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        wait_for(lambda: len(harvester.by_status("finished")) >= 2, what="first finished ranges")
        if how == "SIGTERM to rank 0":
            os.kill(protocol.read_heartbeat(ap)["pid"], signal.SIGTERM)
        elif how == "SIGUSR1 to mpirun":
            pilot.proc.send_signal(signal.SIGUSR1)
        else:
            protocol.request_drain(ap, "test")
        assert pilot.wait() == 0, pilot.output()
    attrs = protocol.read_worker_attributes(ap)
    assert "drain" in attrs["endReason"]
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids.values()) == {1}
    assert harvester.by_status("not-done") and not harvester.by_status("failed")
    check_sleep_outputs(harvester.by_status("finished"))
    handed_out = {s["eventRangeID"] for s in harvester.statuses}
    assert handed_out | {r["eventRangeID"] for r in harvester.remaining[1001]} >= {r["eventRangeID"] for r in ranges}


def test_rank0_killed_reports_nothing_unfinished(mpi, ap, h):
    """SIGKILL of rank 0 ends the pilot; every range reported finished before has its verified output."""
    ranges = h.make_ranges(77, 1001, 60, per_range=5)
    job = h.sim_job()
    job["payload"]["args"]["size"] = 50_000
    h.write_spec(ap, [job], n_ranges=8)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        wait_for(lambda: len(harvester.by_status("finished")) >= 3, what="first finished ranges")
        os.kill(protocol.read_heartbeat(ap)["pid"], signal.SIGKILL)
        assert pilot.wait() != 0
    finished = harvester.by_status("finished")
    assert 3 <= len(finished) < len(ranges)
    h.check_finished(finished, 77, job["payload"]["args"])
    assert protocol.read_worker_attributes(ap) is None  # no final state claimed


def test_bad_job_spec_fails_the_worker_with_the_reason(mpi, ap, h):
    (ap / protocol.JOB_SPEC).write_text('{"protocol": 1, "jobs": [{"PandaID": 1, "taskID": 2, "payload": {}}]}')
    pilot = h.PilotRun(ap, 2)
    assert pilot.wait() == 1
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["workerStatus"] == "failed" and "HPCJobs.json" in attrs["pilotErrorDiag"]
    assert "exactly one of 'callable' or 'command'" in attrs["pilotErrorDiag"]


def test_a_looping_payload_is_killed_and_its_range_fails_with_its_own_code(mpi, ap, h):
    """Under real mpirun: a range whose payload hangs (no output, no CPU) is killed after looping_timeout and
    reported failed with code 1150 (the central service hands it out again); the ranks go on with the rest."""
    ranges = h.make_ranges(77, 1001, 12, per_range=5)
    job = h.sim_job(callable="jumbo.payloads:fail", args={**h.SIM_ARGS, "fail_events": [22], "mode": "hang"})
    h.write_spec(ap, [job], n_ranges=4, looping_timeout=2.0)
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    failed = harvester.by_status("failed")
    assert [(s["startEvent"], s["errorCode"]) for s in failed] == [(20, CODE_LOOPING)], failed
    assert "looping" in failed[0]["errorDiag"]
    finished = harvester.by_status("finished")
    assert len(finished) == 11 and not harvester.by_status("not-done")
    h.check_finished(finished, 77)
    assert Counter(s["eventRangeID"] for s in harvester.statuses).most_common(1)[0][1] == 1  # each once


def test_low_free_disk_space_drains_the_pilot_cleanly(mpi, ap, h):
    """Under real mpirun: less free space in the work dir than min_free_disk_mb drains the pilot: what runs
    finishes and is reported, the rest goes back not-done, the pilot exits 0 and says why."""
    ranges = h.make_ranges(77, 1001, 40, per_range=10)
    job = {
        "PandaID": 1001,
        "taskID": 77,
        "payload": {"callable": "jumbo.payloads:sleep", "args": {"seconds_per_event": 0.01}},
    }
    h.write_spec(ap, [job], n_ranges=8, min_free_disk_mb=1 << 40, disk_check_interval=0.5)  # a petabyte: never
    with h.Harvester(ap, {1001: ranges}) as harvester:
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["endReason"].startswith("low disk space"), attrs["endReason"]
    assert protocol.read_heartbeat(ap)["state"] == "finished"
    ids = Counter(s["eventRangeID"] for s in harvester.statuses)
    assert set(ids.values()) <= {1}  # reported at most once, finished or not-done
    assert not harvester.by_status("failed")
    assert len(harvester.by_status("finished")) < len(ranges)  # it stopped early (here: before taking work)
    # nothing lost: each range is finished, reported not-done, never handed out, or in an answer the draining pilot
    # left unread (the harvester hands those back when the worker ends)
    unread = {r["eventRangeID"] for answer in protocol.read_event_ranges(ap) for r in answer.ranges.get(1001, [])}
    back = {s["eventRangeID"] for s in harvester.by_status("not-done")} | unread
    back |= {r["eventRangeID"] for r in harvester.remaining[1001]}
    assert back | {s["eventRangeID"] for s in harvester.by_status("finished")} == {r["eventRangeID"] for r in ranges}
    check_sleep_outputs(harvester.by_status("finished"))


def test_persistent_pilot_idles_takes_a_new_job_and_ends_at_its_idle_timeout(mpi, ap, h):
    first, second = h.make_ranges(77, 1001, 8, per_range=5), h.make_ranges(78, 1002, 8, per_range=5)
    h.write_spec(ap, [h.sim_job()], prefetch=1, n_ranges=4, idle_timeout=3.0)
    with h.Harvester(ap, {1001: first, 1002: second}) as harvester:
        pilot = h.PilotRun(ap, 2)
        request = wait_for(lambda: protocol.pending(ap, protocol.JOB_REQUESTS), 60, "the job request", 0.02)
        wait_for(lambda: protocol.read_heartbeat(ap)["state"] == "idle", 10, "the idle heartbeat", 0.02)
        ((seq, path),) = request
        protocol.mark_consumed(ap, path)
        protocol.write_new_jobs(ap, seq, [h.sim_job(panda_id=1002, task_id=78)])
        assert pilot.wait() == 0, pilot.output()
    ids = Counter(s["eventRangeID"] for s in harvester.by_status("finished"))
    assert set(ids) == {r["eventRangeID"] for r in first + second} and set(ids.values()) == {1}  # exactly once
    h.check_finished([s for s in harvester.statuses if s["PandaID"] == 1002], 78)
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["endReason"].startswith("idle timeout") and sorted(attrs["jobs"]) == ["1001", "1002"]
    assert attrs["jobs"]["1002"]["nEventsFinished"] == 40
    assert len(protocol.pending(ap, protocol.JOB_REQUESTS)) == 1  # it asked again, then timed out


def test_persistent_pilot_asks_again_after_a_bad_answer_and_ends_at_a_stop(mpi, ap, h):
    h.write_spec(ap, [h.sim_job()], prefetch=1, n_ranges=4, idle_timeout=600.0)
    with h.Harvester(ap, {1001: h.make_ranges(77, 1001, 4, per_range=5)}):
        pilot = h.PilotRun(ap, 2)
        ((seq, path),) = wait_for(lambda: protocol.pending(ap, protocol.JOB_REQUESTS), 60, "the job request", 0.02)
        protocol.mark_consumed(ap, path)
        protocol.stream_path(ap, protocol.NEW_JOBS, seq).write_text('{"protocol": 1, "seq": %d, "jobs": 5}' % seq)
        ((again, path),) = wait_for(lambda: protocol.pending(ap, protocol.JOB_REQUESTS), 30, "a new request", 0.02)
        assert again == seq + 1 and protocol.stream_path(ap, protocol.NEW_JOBS, seq).with_suffix(".json.bad").exists()
        protocol.mark_consumed(ap, path)
        protocol.write_new_jobs(ap, again, [], stop="queue draining")
        assert pilot.wait(timeout=30) == 0, pilot.output()
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["endReason"] == "harvester: queue draining" and "rejected" in " ".join(attrs["errors"])


def test_idle_persistent_pilot_ends_at_its_walltime_drain(mpi, ap, h):
    h.write_spec(ap, [h.sim_job()], prefetch=1, n_ranges=4, idle_timeout=600.0)
    with h.Harvester(ap, {1001: h.make_ranges(77, 1001, 4, per_range=5)}) as harvester:
        pilot = h.PilotRun(ap, 2, args=("--end-time", "+8"))
        wait_for(lambda: protocol.pending(ap, protocol.JOB_REQUESTS), 60, "the job request", 0.02)
        assert pilot.wait(timeout=40) == 0, pilot.output()  # at the end time, not after 10 minutes idle
    assert protocol.read_worker_attributes(ap)["endReason"].startswith("walltime")
    assert len(harvester.by_status("finished")) == 4
