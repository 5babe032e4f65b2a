"""Rank 0's dispatcher thread: keeps every rank supplied with ranges, collects results, heartbeats, drains.

Credit-based pull: each rank announces how many ranges it wants ("ready" with prefetch + 1, then one per result);
the dispatcher sends a range wherever a credit is open. A range a rank gives back unrun (its own drain) goes to
another rank unless the whole pilot drains, in which case it is reported not-done. At the end of the work (nothing
queued, nothing more to come), a rank that runs dry while another still holds several ranges makes the dispatcher
ask that one to give back those it has not started ("give_back" -> "returned"): they go to the idle rank, and a
range is still run by one rank and reported once. Rank 0's own work loop is fed
through a LocalChannel, the others over MPI; only this thread calls MPI on rank 0.

A persistent pilot (``idle_timeout`` > 0, file mode) out of ranges does not stop its ranks: it asks the harvester
for another job and idles (ranks keep their credits) until the answer brings jobs ("jobs" to every rank, then their
ranges as usual), a stop, the idle timeout, a drain or the walltime.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import threading
import time
from collections import deque
from pathlib import Path

from jumbo import protocol
from jumbo.channel import MAX_SLEEP, MIN_SLEEP, TAG_DOWN, TAG_UP, LocalChannel, Sends
from jumbo.walltime import RangeTimer

log = logging.getLogger(__name__)

GIVE_BACK_GAP = 2  # ranges between the most and the least held at the end that make the dispatcher rebalance
IDLE_CAP = 0.02  # longest idle sleep while every rank holds work for longer (more wake-ups cost the payloads CPU)


class Dispatcher:
    def __init__(
        self,
        comm,
        local: LocalChannel,
        ap: Path,
        source,
        reporter,
        settings: dict,
        deadline: float | None,
        drain: threading.Event,
        prefetch: int,
    ):
        from mpi4py import MPI  # optional at import (jumbo.pilot): importing it initialises MPI

        self.MPI, self.comm, self.local, self.ap = MPI, comm, local, Path(ap)
        self.size = comm.Get_size()
        self.source, self.reporter, self.settings = source, reporter, settings
        self.deadline, self.drain = deadline, drain
        self.low_water = max(1, 2 * self.size * (prefetch + 1))
        self.queue: deque = deque()
        self.seen: set[str] = set()
        self.credits = dict.fromkeys(range(self.size), 0)
        self.in_flight: dict[int, dict[str, dict]] = {r: {} for r in range(self.size)}
        self.state = dict.fromkeys(range(self.size), "active")  # active -> stopping -> gone
        self.metrics: dict[int, dict] = {}
        self.timer = RangeTimer()
        self.draining = ""
        self.end_reason = ""
        self.fatal = ""
        self.dispatched = 0
        self.asked: dict[int, tuple[int, int]] = {}  # donor -> (taker, n): asked to give back, no answer yet
        self.spare: dict[int, int] = {}  # unhanded ranges a rank said it kept when it gave back (not asked at 0)
        self.sends = Sends()
        self._next_beat = 0.0
        self._next_kill_check = 0.0
        self._next_disk_check = 0.0
        self.idle_since: float | None = None  # a persistent pilot waiting for another job since then
        self.thread = threading.Thread(target=self.run, name="dispatcher", daemon=True)

    # -- messaging
    def _send(self, rank: int, msg: dict) -> None:
        if rank == 0:
            self.local.down.put(msg)
        else:
            self.sends.add(self.comm.isend(msg, dest=rank, tag=TAG_DOWN))

    def _incoming(self):
        status = self.MPI.Status()
        while self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=TAG_UP, status=status):
            yield self.comm.recv(source=status.Get_source(), tag=TAG_UP)
        while not self.local.up.empty():
            yield self.local.up.get_nowait()

    def _take_back(self, rank: int, results: list[dict]) -> None:
        for res in results:
            task = self.in_flight[rank].pop(res["eventRangeID"], None)
            if res["eventStatus"] == "not-done" and task is not None and not self.draining:
                self.queue.appendleft(task)  # another rank runs it
                continue
            if res["eventStatus"] != "not-done":
                self.timer.add(res["endTime"] - res["startTime"])
            self.reporter.add(res)

    def _handle(self, msg: dict) -> None:
        rank, kind = msg["rank"], msg["kind"]
        self._take_back(rank, msg.get("results", []))
        if kind in ("ready", "result"):
            self.credits[rank] += msg.get("want", 0)
        elif kind == "returned":
            self._returned(rank, msg["tasks"])
            self.spare[rank] = msg.get("kept", 0)
        elif kind == "leaving":
            log.info("rank %d leaves: %s", rank, msg.get("reason"))
            self._stop_rank(rank)
        elif kind == "bye":
            self.metrics[rank] = msg.get("metrics", {})
            self.state[rank] = "gone"
            for task in self.in_flight[rank].values():  # cannot happen with FIFO channels; never lose a range
                self.reporter.add(
                    {
                        "PandaID": task["pid"],
                        "eventRangeID": task["range"]["eventRangeID"],
                        "eventStatus": "not-done",
                        "nEvents": 0,
                        "errorCode": 0,
                        "errorDiag": "rank left without an answer",
                    }
                )
            self.in_flight[rank].clear()

    def _returned(self, rank: int, tasks: list[dict]) -> None:
        """Ranges a rank gave back unstarted (see _rebalance): queued again for another rank (or, while draining,
        reported not-done); the rank itself reports nothing for them."""
        self.asked.pop(rank, None)
        log.info("rank %d gave back %d ranges", rank, len(tasks))
        for task in reversed(tasks):
            if self.in_flight[rank].pop(task["range"]["eventRangeID"], None) is None:
                log.error("rank %d gave back range %s it was not given: ignored", rank, task["range"]["eventRangeID"])
                continue
            if self.draining:
                self.reporter.add(_unrun(task, self.end_reason or "pilot stopped"))
            else:
                self.queue.appendleft(task)

    def _rebalance(self) -> None:
        """End of the work (nothing queued, nothing more to come): the rank that holds the fewest ranges (counting
        those asked for it) and wants more asks the one that holds the most to give back half the difference, when
        it is at least GIVE_BACK_GAP (equal holdings end at about the same time). One request open per donor; a
        rank answers with what it had not handed to its payload child and is not asked again while it said it keeps
        none."""
        active = [r for r in range(self.size) if self.state[r] == "active"]
        wanting = [r for r in active if self.credits[r] > 0]
        if not wanting:
            return
        coming: dict[int, int] = {}
        for taker, n in self.asked.values():
            coming[taker] = coming.get(taker, 0) + n

        def held(rank: int) -> int:
            return len(self.in_flight[rank]) + coming.get(rank, 0)

        taker = min(wanting, key=held)
        donors = {
            r: len(self.in_flight[r]) for r in active if r != taker and r not in self.asked and self.spare.get(r, 1) > 0
        }
        if not donors:
            return
        donor = max(donors, key=donors.__getitem__)
        gap = donors[donor] - held(taker)
        if gap >= GIVE_BACK_GAP:
            n = min(gap // 2, self.credits[taker])
            log.info(
                "rank %d holds %d ranges, rank %d %d: asking rank %d for %d",
                donor,
                donors[donor],
                taker,
                held(taker),
                donor,
                n,
            )
            self.asked[donor] = (taker, n)
            self._send(donor, {"kind": "give_back", "n": n})

    def _stop_rank(self, rank: int) -> None:
        if self.state[rank] == "active":
            self.state[rank] = "stopping"
            self.credits[rank] = 0
            self._send(rank, {"kind": "stop"})

    # -- decisions
    def _low_disk(self) -> str:
        """A drain reason if the access point's file system has less free space than min_free_disk_mb, else ''.
        Outputs are written there: draining while there is room lets in-flight ranges finish and be reported."""
        want = int(self.settings["min_free_disk_mb"] or 0)
        try:
            free = shutil.disk_usage(self.ap).free >> 20
        except OSError as exc:
            log.warning("cannot read the free disk space of %s: %s", self.ap, exc)
            return ""
        if free >= want:
            return ""
        log.error("only %d MB free in %s (min_free_disk_mb %d): draining", free, self.ap, want)
        return f"low disk space: {free} MB free in the work dir (< {want} MB)"

    def _check_drain(self, now: float) -> None:
        if self.draining:
            return
        if self.drain.is_set():
            self.draining = "drain signal"
        elif now >= self._next_kill_check:
            self._next_kill_check = now + self.settings["poll_interval"]
            asked = protocol.drain_requested(self.ap)
            if asked is not None:
                self.draining = f"harvester asked to drain ({asked.get('reason', '')})"
        if not self.draining and now >= self._next_disk_check:
            self._next_disk_check = now + float(self.settings["disk_check_interval"])
            self.draining = self._low_disk()
        if not self.draining and self.deadline is not None and not self.timer.fits(now, self.deadline):
            self.draining = "walltime: another range does not fit"
        if self.draining:
            log.info(
                "draining: %s; %d ranges queued, %d in flight",
                self.draining,
                len(self.queue),
                sum(map(len, self.in_flight.values())),
            )
            self.end_reason = self.draining
            for rank in range(self.size):
                self._stop_rank(rank)

    def _assign(self) -> bool:
        """Queued ranges to the ranks with open credits, each to the one that holds the fewest at that moment (when
        few are queued, at the end, the emptiest ranks get them)."""
        if not self.queue:
            return False
        batches: dict[int, list] = {}
        heap = [(len(self.in_flight[r]), r) for r in range(self.size) if self.state[r] == "active" and self.credits[r]]
        heapq.heapify(heap)
        while self.queue and heap:
            held, rank = heapq.heappop(heap)
            task = self.queue.popleft()
            batches.setdefault(rank, []).append(task)
            self.in_flight[rank][task["range"]["eventRangeID"]] = task
            self.credits[rank] -= 1
            if self.credits[rank] > 0:
                heapq.heappush(heap, (held + 1, rank))
        for rank, tasks in batches.items():
            self.spare.pop(rank, None)  # it holds new ranges: it may give back again
            self._send(rank, {"kind": "ranges", "tasks": tasks})
            self.dispatched += len(tasks)
        return bool(batches)

    def _heartbeat(self, now: float, state: str) -> None:
        counts = self.reporter.totals()
        counts.update(
            queued=len(self.queue), in_flight=sum(map(len, self.in_flight.values())), dispatched=self.dispatched
        )
        protocol.write_heartbeat(
            self.ap,
            {"state": state, "pid": os.getpid(), "ranks": self.size, "counts": counts, "draining": self.draining},
        )
        self._next_beat = now + self.settings["heartbeat_interval"]

    def _accept(self, tasks: list[dict]) -> None:
        for task in tasks:
            rid = task["range"]["eventRangeID"]
            if rid in self.seen:
                log.warning("range %s received twice from the harvester: the second copy is ignored", rid)
                continue
            self.seen.add(rid)
            self.queue.append(task)

    # -- the loop
    def step(self, now: float) -> bool:
        progressed = False
        for msg in self._incoming():
            self._handle(msg)
            progressed = True
        if not self.draining:
            self._accept(self.source.poll(now, len(self.queue), self.low_water))
        self._check_drain(now)
        if not self.draining:
            if self.source.exhausted and not self.queue and not any(self.in_flight.values()):
                if not self._idle(now):
                    self.end_reason = self.end_reason or "no more ranges"
                    for rank in range(self.size):
                        self._stop_rank(rank)
            elif self._assign():
                progressed = True
            elif self.source.exhausted and not self.queue:
                self._rebalance()
        self.reporter.maybe_flush(now)
        if now >= self._next_beat:
            self._heartbeat(now, "draining" if self.draining else "idle" if self.idle_since is not None else "running")
        return progressed

    def _idle(self, now: float) -> bool:
        """Out of ranges: True while a persistent pilot waits for another job (it asks once, then looks for the
        answer); False when the pilot is to end (not persistent, a stop answer, the idle timeout)."""
        timeout = float(self.settings.get("idle_timeout") or 0.0)
        if timeout <= 0 or not hasattr(self.source, "request_job"):
            return False
        if self.idle_since is None:
            self.idle_since = now
            self.reporter.maybe_flush(now, force=True)  # the last results out first: the job can settle
            self._heartbeat(now, "idle")
        self.source.request_job()  # once; again only if the answer was unusable (one request open at a time)
        answer = self.source.new_jobs(now)
        if answer is not None and answer.jobs:
            jobs = {int(j["PandaID"]): j for j in answer.jobs}
            log.info("new job(s) %s after %.2f s idle", sorted(jobs), now - self.idle_since)
            self.reporter.add_jobs(jobs)
            for rank in range(self.size):
                if self.state[rank] == "active":
                    self._send(rank, {"kind": "jobs", "jobs": jobs})
            self.idle_since = None
            self.end_reason = ""
            self._heartbeat(now, "running")
            return True
        if answer is not None:
            self.end_reason = f"harvester: {answer.stop}"
            return False
        if now - self.idle_since >= timeout:
            self.end_reason = f"idle timeout: no new job within {timeout:.0f} s"
            return False
        return True

    def _max_pause(self) -> float:
        """Idle sleep cap: a fraction of the time a rank can work on from what it holds, so a rank with one range
        left gets a quick answer (a quarter of the time between two results), ranks with a queue let the
        dispatcher sleep longer (up to IDLE_CAP while each holds a range beyond the one it runs: ranks of short
        ranges hold deep queues), and long ranges do not cost CPU in polling."""
        if self.idle_since is not None:  # waiting for a job: look a few times per poll interval, no faster
            return max(MAX_SLEEP, float(self.settings["poll_interval"]) / 4)
        if not self.timer.count:
            return MAX_SLEEP
        held = min((len(self.in_flight[r]) for r in range(self.size) if self.state[r] == "active"), default=0)
        if held > 1:
            return min(IDLE_CAP, max(MIN_SLEEP, self.timer.mean * (held - 1) / 2))
        return min(MAX_SLEEP, max(MIN_SLEEP, self.timer.mean / (4 * self.size)))

    def run(self) -> None:
        pause = MIN_SLEEP
        try:
            while any(s != "gone" for s in self.state.values()):
                if self.step(time.time()):
                    pause = MIN_SLEEP  # then doubling up to the cap: another rank may answer soon
                    continue
                self.local.wake.wait(pause)
                self.local.wake.clear()
                pause = min(self._max_pause(), pause * 2)
        except Exception as exc:
            log.exception("dispatcher failed; stopping all ranks")
            self.fatal = f"dispatcher failed: {type(exc).__name__}: {exc}"
            self.end_reason = self.fatal
            self._emergency_stop()
        for task in self.queue:
            self.reporter.add(_unrun(task, self.end_reason or "pilot stopped"))
        self.queue.clear()
        self.reporter.maybe_flush(time.time(), force=True)
        self.sends.wait()

    def _emergency_stop(self) -> None:
        self.draining = self.draining or "error"
        for rank in range(self.size):
            try:
                self._stop_rank(rank)
            except Exception:
                log.exception("cannot tell rank %d to stop", rank)
        deadline = time.monotonic() + 60
        while any(s != "gone" for s in self.state.values()) and time.monotonic() < deadline:
            try:
                for msg in self._incoming():
                    self._handle(msg)
            except Exception:
                log.exception("while collecting the ranks' last results")
            time.sleep(MAX_SLEEP)


def _unrun(task: dict, why: str) -> dict:
    rng = task["range"]
    return {
        "PandaID": task["pid"],
        "eventRangeID": rng["eventRangeID"],
        "eventStatus": "not-done",
        "startEvent": rng["startEvent"],
        "lastEvent": rng["lastEvent"],
        "nEvents": rng["lastEvent"] - rng["startEvent"] + 1,
        "rank": 0,
        "errorCode": 0,
        "errorDiag": why,
    }
