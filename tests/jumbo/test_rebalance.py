"""The dispatcher's end-of-work rebalancing (give_back -> returned) on its own, with a recording stand-in for MPI:
who is asked, for how many, and what becomes of the ranges that come back (exactly once)."""

from __future__ import annotations

import threading

import pytest

from jumbo.channel import LocalChannel
from jumbo.dispatcher import Dispatcher

pytest.importorskip("mpi4py")  # jumbo.dispatcher imports it when built (tests/jumbo/conftest.py: CI installs it)


class FakeComm:
    def __init__(self, size: int):
        self.size, self.sent = size, []

    def Get_size(self) -> int:
        return self.size

    def isend(self, msg, dest, tag):
        self.sent.append((dest, msg))
        return self

    def Test(self) -> bool:
        return True


class Source:
    exhausted = True

    def poll(self, now, queued, low_water):
        return []


class Reporter:
    def __init__(self) -> None:
        self.added: list[dict] = []

    def add(self, result: dict) -> None:
        self.added.append(result)


def task(i: int) -> dict:
    return {"pid": 1, "range": {"eventRangeID": f"r{i}", "startEvent": i, "lastEvent": i}}


def dispatcher(tmp_path, size: int = 3) -> tuple[Dispatcher, FakeComm, Reporter]:
    comm, reporter = FakeComm(size), Reporter()
    d = Dispatcher(comm, LocalChannel(), tmp_path, Source(), reporter, {"poll_interval": 1}, None, threading.Event(), 1)
    return d, comm, reporter


def hold(d: Dispatcher, rank: int, ids: range) -> None:
    for i in ids:
        d.in_flight[rank][f"r{i}"] = task(i)


def test_the_emptiest_wanting_rank_gets_half_the_difference_from_the_fullest(tmp_path):
    d, comm, _ = dispatcher(tmp_path)
    hold(d, 1, range(0, 9))
    hold(d, 0, range(9, 12))
    hold(d, 2, range(12, 13))
    d.credits.update({0: 1, 1: 0, 2: 5})
    d._rebalance()
    assert comm.sent == [(1, {"kind": "give_back", "n": 4})]  # (9 - 1) // 2, rank 1 the fullest, rank 2 the taker
    d._rebalance()
    assert len(comm.sent) == 1  # with the 4 asked for it, rank 2 counts as holding 5: rank 0 (3) gives nothing
    d._handle({"kind": "returned", "rank": 1, "tasks": [task(7), task(8)], "kept": 0})
    assert [t["range"]["eventRangeID"] for t in d.queue] == ["r7", "r8"] and set(d.in_flight[1]) == {
        f"r{i}" for i in range(7)
    }
    assert d._assign() and not d.queue
    assert comm.sent[-1] == (2, {"kind": "ranges", "tasks": [task(7), task(8)]})  # to the emptiest, not back
    d._rebalance()
    assert all(msg["kind"] != "give_back" or dest != 1 for dest, msg in comm.sent[2:])  # kept none: not asked again


def test_balanced_holdings_are_left_alone(tmp_path):
    d, comm, _ = dispatcher(tmp_path)
    hold(d, 0, range(0, 2))
    hold(d, 1, range(2, 5))
    hold(d, 2, range(5, 8))
    d.credits.update({0: 1, 1: 1, 2: 1})
    d._rebalance()
    assert comm.sent == []


def test_ranges_given_back_while_draining_are_reported_not_done_once_and_strangers_are_ignored(tmp_path):
    d, _, reporter = dispatcher(tmp_path)
    hold(d, 1, range(0, 4))
    d.draining = d.end_reason = "drain signal"
    d._handle({"kind": "returned", "rank": 1, "tasks": [task(3), task(99)], "kept": 0})
    assert [(r["eventRangeID"], r["eventStatus"]) for r in reporter.added] == [("r3", "not-done")]
    assert not d.queue and set(d.in_flight[1]) == {"r0", "r1", "r2"}


def test_a_donor_that_has_not_answered_yet_does_not_hold_up_the_others(tmp_path):
    d, comm, _ = dispatcher(tmp_path, size=4)
    hold(d, 1, range(0, 9))
    hold(d, 2, range(9, 17))
    d.credits.update({1: 0, 2: 0, 3: 10})  # rank 0 holds nothing and wants nothing (its loop is over)
    d._rebalance()
    d._rebalance()
    d._rebalance()
    # rank 3 holds 0: rank 1 is asked for 4; counting those, rank 3 holds 4, rank 2 (8) is asked for 2; then 6 vs 8
    assert comm.sent == [(1, {"kind": "give_back", "n": 4}), (2, {"kind": "give_back", "n": 2})]
