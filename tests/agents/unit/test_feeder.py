"""Feeder: answers a pilot's request from the stock (fetching what is missing), clamps it to the worker's own jobs
and rank count, answers a request again identically after a crash, and says "no more" only when nothing can still
come (none ready at the central service, none in stock, none in flight at any worker, no report waiting); until then
the request is held."""

from __future__ import annotations

import os

from doubles import Outage, panda_ranges
from harvester_edge.agents.feeder import Feeder
from harvester_edge.states import RangeState as R
from harvester_edge.workers import range_limit
from jumbo import protocol


def running(site, ranks=2):
    """Job 1 (task 77) run by worker 1 with `ranks` ranks; returns the access point."""
    site.job(1, "running")
    return site.worker(1, "running", jobs=(1,), batch_id="1", ranks_per_node=ranks)


def ask(ap, seq, n, panda_id=1):
    protocol.write_event_request(ap, seq, {panda_id: {"pandaID": panda_id, "taskID": 77, "jobsetID": 77, "nRanges": n}})


def answer(ap, seq):
    """(range ids, no-more job ids) of the ranges file for request `seq`, or None if it was not answered."""
    path = protocol.stream_path(ap, protocol.RANGES, seq)
    if not path.exists():
        return None
    got = protocol.load_event_ranges(path)
    return [r["eventRangeID"] for r in got.ranges.get(1, [])], sorted(got.no_more)


def held(ap, seq):
    return answer(ap, seq) is None and protocol.stream_path(ap, protocol.REQUESTS, seq).exists()


def test_a_request_is_answered_from_the_stock_and_the_stock_is_topped_up(site):
    ap = running(site)
    site.ranges(1, panda_ranges(1, [1, 2, 3]))
    ask(ap, 1, 2)
    site.transport.on("event/acquire_event_ranges", panda_ranges(1, [4, 5, 6]))
    site.cycle(site.agent(Feeder))
    assert answer(ap, 1) == (["77-1-1-1-1", "77-1-1-2-1"], [])
    assert [(r["state"], r["worker_id"], r["request_seq"]) for r in site.read("event_ranges", state="dispatched")] == [
        ("dispatched", 1, 1),
        ("dispatched", 1, 1),
    ]
    assert not protocol.stream_path(ap, protocol.REQUESTS, 1).exists()  # consumed
    # one request's worth per rank in stock: 2 x 2 ranks wanted, 1 left -> 3 more asked by top_up
    (call,) = site.transport.called("event/acquire_event_ranges")
    assert call.body["n_ranges"] == 3
    assert len(site.read("event_ranges", state="fetched")) == 4


def test_what_the_stock_lacks_is_fetched_for_the_request(site):
    ap = running(site)
    ask(ap, 1, 2)
    site.transport.on("event/acquire_event_ranges", panda_ranges(1, [1, 2, 3, 4]))
    site.cycle(site.agent(Feeder))
    assert answer(ap, 1) == (["77-1-1-1-1", "77-1-1-2-1"], [])
    assert [c.body["n_ranges"] for c in site.transport.calls] == [4]  # what is missing, plus a request's worth
    assert site.one("jobs")["no_more_ranges"] == 0


def test_no_more_only_when_nothing_can_still_come(site):
    ap = running(site)
    ask(ap, 1, 2)
    site.transport.on("event/acquire_event_ranges", [])
    site.cycle(site.agent(Feeder))
    assert answer(ap, 1) == ([], [1])
    assert site.one("jobs")["no_more_ranges"] == 1


def test_held_while_another_worker_of_the_task_holds_ranges(site):
    ap = running(site)
    site.worker(2, "running", jobs=(1,), batch_id="2")
    site.ranges(1, panda_ranges(1, [9]), state="dispatched", worker_id=2)  # may come back if worker 2 dies
    ask(ap, 1, 2)
    site.transport.on("event/acquire_event_ranges", [])
    feeder = site.agent(Feeder)
    site.cycle(feeder)
    assert held(ap, 1)
    site.move(["77-1-1-9-1"], R.DISPATCHED, R.FINISHED)  # worker 2's range is done: nothing can come any more
    site.cycle(feeder)
    assert answer(ap, 1) == ([], [1])


def test_held_while_a_range_report_waits_in_the_outbox(site):
    ap = running(site)
    site.message("update_event_ranges", [{"eventRangeID": "77-1-1-5-1", "eventStatus": "failed"}])
    ask(ap, 1, 2)
    site.transport.on("event/acquire_event_ranges", [])
    site.cycle(site.agent(Feeder))
    assert held(ap, 1)  # the failed range becomes ready again once the report is sent


def test_an_unreachable_central_service_holds_the_request(site):
    ap = running(site)
    ask(ap, 1, 2)
    site.transport.always("event/acquire_event_ranges", Outage)
    site.cycle(site.agent(Feeder))
    assert held(ap, 1)
    assert site.one("jobs")["no_more_ranges"] == 0


def test_a_request_answered_before_a_crash_gets_the_same_ranges_again(site):
    ap = running(site)
    site.ranges(1, panda_ranges(1, [1, 2, 3, 4, 5, 6]))
    ask(ap, 1, 2)
    feeder = site.agent(Feeder)
    site.cycle(feeder)
    first = answer(ap, 1)
    # the crash came after the commit, before the ranges file and the rename: both undone
    os.unlink(protocol.stream_path(ap, protocol.RANGES, 1))
    request = protocol.stream_path(ap, protocol.REQUESTS, 1)
    os.replace(request.with_name(request.name + ".read"), request)
    site.cycle(feeder)
    assert answer(ap, 1) == first == (["77-1-1-1-1", "77-1-1-2-1"], [])
    assert len(site.read("event_ranges", state="dispatched")) == 2  # none handed out twice
    assert site.transport.calls == []


def test_a_request_is_clamped_to_the_workers_ranks_and_its_own_jobs(site):
    ap = running(site, ranks=2)
    site.job(2, "running")  # not worker 1's job
    site.ranges(1, panda_ranges(1, range(1, 11)))
    site.ranges(2, panda_ranges(2, [1]))
    protocol.write_event_request(
        ap,
        1,
        {
            1: {"pandaID": 1, "taskID": 77, "jobsetID": 77, "nRanges": 100},
            2: {"pandaID": 2, "taskID": 77, "jobsetID": 77, "nRanges": 1},
        },
    )
    site.cycle(site.agent(Feeder))
    got = protocol.load_event_ranges(protocol.stream_path(ap, protocol.RANGES, 1))
    assert len(got.ranges[1]) == range_limit(2) == 4
    assert 2 not in got.ranges
    assert site.one("event_ranges", panda_id=2)["state"] == "fetched"
