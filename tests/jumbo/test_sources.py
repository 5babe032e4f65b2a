"""Rank 0's range sources and end-time rules, without MPI (real files in the access point)."""

from __future__ import annotations

from jumbo import protocol
from jumbo.sources import FileSource
from jumbo.walltime import RangeTimer, resolve_end_time

JOBS = {1001: {"PandaID": 1001, "taskID": 77, "jobsetID": 5}}


def test_file_source_requests_reads_and_backs_off(ap, h):
    src = FileSource(ap, JOBS, n_ranges=3, poll_interval=0.1)
    assert src.poll(100.0, queued=0, low_water=4) == []
    [req] = protocol.read_event_requests(ap)
    assert req.seq == 1 and req.requests[1001]["nRanges"] == 3
    assert src.poll(100.5, 0, 4) == [] and len(protocol.read_event_requests(ap)) == 1  # one request at a time
    protocol.mark_consumed(ap, req)

    protocol.write_event_ranges(ap, 1, {1001: []})  # nothing for now
    assert src.poll(101.0, 0, 4) == []
    assert protocol.read_event_requests(ap) == []  # backs off after an empty answer
    src.poll(101.0 + src.empty_backoff, 0, 4)
    [req] = protocol.read_event_requests(ap)
    assert req.seq == 2
    protocol.mark_consumed(ap, req)

    ranges = h.make_ranges(77, 1001, 3)
    protocol.write_event_ranges(ap, 2, {1001: ranges}, no_more={1001})
    tasks = src.poll(200.0, 0, 4)
    assert [t["range"] for t in tasks] == ranges and src.exhausted
    assert src.poll(300.0, 0, 4) == [] and protocol.read_event_requests(ap) == []  # no request once exhausted


def test_file_source_quarantines_malformed_and_unknown_jobs(ap, h):
    src = FileSource(ap, JOBS, n_ranges=3, poll_interval=0.0)
    protocol.stream_path(ap, protocol.RANGES, 0).write_text("{not json")
    protocol.write_event_ranges(ap, 1, {4242: h.make_ranges(1, 4242, 2), 1001: h.make_ranges(77, 1001, 1)})
    tasks = src.poll(1.0, 10, 4)
    assert [t["pid"] for t in tasks] == [1001]
    assert (ap / "JobsEventRanges.0.json.bad").exists() and (ap / "JobsEventRanges.1.json.read").exists()
    assert "JobsEventRanges.0.json" in src.errors[0] and "job 4242" in src.errors[1]


def test_status_reports_are_rotated(ap):
    src = FileSource(ap, JOBS, n_ranges=3, poll_interval=0.0)
    src.report([{"PandaID": 1001, "eventRangeID": "a", "eventStatus": "finished"}])
    src.report([{"PandaID": 1001, "eventRangeID": "b", "eventStatus": "not-done"}])
    batches = protocol.read_event_status(ap)
    assert [b.seq for b in batches] == [1, 2] and batches[1].events[1001][0]["eventStatus"] == "not-done"
    assert FileSource(ap, JOBS, 3, 0.0).next_status == 3  # a restarted pilot goes on after the last sequence


def test_end_time_sources():
    assert resolve_end_time("123", 456.0, {"SLURM_JOB_END_TIME": "789"}) == 123.0
    assert resolve_end_time(None, 456.0, {"SLURM_JOB_END_TIME": "789"}) == 456.0
    assert resolve_end_time(None, None, {"SLURM_JOB_END_TIME": "789"}) == 789.0
    assert resolve_end_time(None, None, {}) is None
    assert resolve_end_time(None, None, {}, walltime=60, started=1000.0) == 1060.0
    assert resolve_end_time(None, None, {"SLURM_JOB_END_TIME": "789"}, walltime=60, started=1000.0) == 789.0
    timer = RangeTimer()
    assert timer.fits(100.0, 100.0) and not timer.fits(100.1, 100.0)
    timer.add(10.0)
    assert timer.fits(90.0, 100.0) and not timer.fits(90.5, 100.0)
