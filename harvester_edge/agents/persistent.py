"""Persistent pilots: an idle pilot of a queue with `persistent` gets its next job within a second.

A persistent pilot out of ranges writes worker_requestjob.<seq>.json into its access point and waits (up to its
idle_timeout), looking for the answer a few times a second. This agent runs on a short interval and reads only the
running workers of persistent queues (no such queue: no cycle at all). For the newest open job request of a worker
it takes a job of the queue that no live worker runs (fetched already, or whose ranges are ready again), else
acquires one from the central service (the fetcher's path: agents.fetcher.acquire), links it to the worker with the
request's sequence (store.job_workers.hand_over), commits, THEN writes worker_newjob.<seq>.json, THEN marks the
request consumed: after a crash in between the same job is written again, so a request gets one job. No job yet:
the request stays open and is looked at next cycle. A worker flagged for a kill, or of a draining queue, is
answered with a stop instead (the pilot ends at once). A pilot that asks is done with its jobs: their links are
"left" at once (store.job_workers.leave), so they settle and are reported finished while it waits or goes on.

The new job's first range request comes a moment after the answer: a new range request of a worker that got a job
in the last WAKE_WINDOW seconds wakes the feeder at once (AgentContext.wake), instead of at the feeder's interval.
"""

from __future__ import annotations

import logging
from pathlib import Path

from harvester_edge import pledges
from harvester_edge.agents.base import Agent, AgentContext
from harvester_edge.agents.fetcher import acquire
from harvester_edge.central.client import CentralRejected, CentralUnavailable
from harvester_edge.config import QueueConfig
from harvester_edge.seams import files as protocol  # the pilot-file seam (offline replay records it)
from harvester_edge.states import JobState
from harvester_edge.store import job_workers, jobs, queues, transition, workers
from harvester_edge.workers import job_spec_of, pilot_job_entry

log = logging.getLogger(__name__)

WAKE_WINDOW = 30.0  # seconds after a hand-over during which the worker's new range requests wake the feeder


def idle_pilots(ctx: AgentContext, queue: QueueConfig) -> int:
    """How many running workers of a persistent queue have a job request open (the submitter makes no new worker
    while one waits: the next job is theirs)."""
    if queue.persistent is None:
        return 0
    idle = 0
    for row in workers.running_of_queue(ctx.store.connection(), queue.name):
        try:
            idle += bool(ctx.files.pending(Path(row["access_point"]), protocol.JOB_REQUESTS))
        except OSError:
            continue
    return idle


class PersistentPilots(Agent):
    name = "persistent"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._handed: dict[int, float] = {}  # worker id -> when it last got a job
        self._asked: dict[int, int] = {}  # worker id -> its newest range request seen
        self._left: set[tuple[int, int]] = set()  # (worker id, job request) whose earlier jobs were left
        self._unreachable = False

    def cycle(self) -> None:
        if not any(q.persistent is not None for q in self.ctx.config.queues):
            return  # nothing to do, and nothing read (no clock, no trace record)
        super().cycle()

    def run_cycle(self, now: float) -> None:
        conn = self.ctx.store.connection()
        draining = queues.draining_names(conn)
        wake = False
        running: set[int] = set()
        for queue in self.ctx.config.queues:
            if queue.persistent is None:
                continue
            asking: list[tuple[int, Path, protocol.JobRequest, str]] = []
            for row in workers.running_of_queue(conn, queue.name):
                worker_id, ap = int(row["id"]), Path(row["access_point"])
                running.add(worker_id)
                wake = self._new_range_request(worker_id, ap, now) or wake
                request = self._newest_request(worker_id, ap)
                if request is None:
                    continue
                stop = "worker to be killed" if row["kill_requested"] else ""
                stop = stop or ("queue draining" if queue.name in draining else "")
                asking.append((worker_id, ap, request, stop))
            if asking:
                self._answer(queue, asking, now)
        if wake and self.ctx.wake is not None:
            self.ctx.wake("feeder")
        self._handed = {w: t for w, t in self._handed.items() if w in running}  # ended workers are forgotten
        self._asked = {w: seq for w, seq in self._asked.items() if w in running}
        self._left = {(w, seq) for w, seq in self._left if w in running}

    def _new_range_request(self, worker_id: int, ap: Path, now: float) -> bool:
        """Whether a worker that just got a job asked for ranges since the last look (the feeder is woken)."""
        if now - self._handed.get(worker_id, float("-inf")) > WAKE_WINDOW:
            return False
        try:
            newest = max((seq for seq, _ in self.ctx.files.pending(ap, protocol.REQUESTS)), default=0)
        except OSError:
            return False
        if newest <= self._asked.get(worker_id, 0):
            return False
        self._asked[worker_id] = newest
        return True

    def _newest_request(self, worker_id: int, ap: Path) -> protocol.JobRequest | None:
        """The worker's newest open job request; older ones (the pilot has one open) are marked consumed."""
        found = [req for _, req in self.ctx.files.each_pending(worker_id, ap, protocol.JOB_REQUESTS, self._load)]
        for old in found[:-1]:
            self.ctx.files.mark_consumed(ap, old.path)
        return found[-1] if found else None

    def _load(self, path: Path) -> protocol.JobRequest:
        return self.ctx.files.load_job_request(path)

    def _answer(self, queue: QueueConfig, asking: list, now: float) -> None:
        new = [(wid, req.seq) for wid, _, req, _ in asking if (wid, req.seq) not in self._left]
        if new:  # an idle pilot is done with its jobs: they settle now, not when the pilot ends
            with self.ctx.store.write() as conn:
                for worker_id, seq in new:
                    job_workers.leave(conn, worker_id, seq, now)
            self._left.update(new)
        conn = self.ctx.store.connection()
        handed = {wid: job_workers.job_of_request(conn, wid, req.seq) for wid, _, req, _ in asking}
        wanting = [wid for wid, _, _, stop in asking if not stop and handed[wid] is None]
        fetched = False
        for worker_id, ap, request, stop in asking:
            panda_id = handed[worker_id]
            if panda_id is None and not stop:
                panda_id = self._hand_over(queue, worker_id, request.seq, now)
                if panda_id is None and not fetched:  # none here: one call for this and the pilots after it
                    fetched = True
                    self._fetch(queue, len(wanting) - wanting.index(worker_id), now)
                    panda_id = self._hand_over(queue, worker_id, request.seq, now)
                if panda_id is None:
                    continue  # no job yet: the request stays open
            try:
                self._write_answer(worker_id, ap, request, panda_id, stop, now)
            except Exception:  # committed: written again next cycle
                log.exception(
                    "worker %d: answer to job request %d not written this cycle",
                    worker_id,
                    request.seq,
                    extra={"worker_id": worker_id},
                )

    def _fetch(self, queue: QueueConfig, n: int, now: float) -> None:
        """Jobs for the idle pilots from the central service (none in a work shortage on an opportunistic queue)."""
        if queue.opportunistic and pledges.shortage_known(self.ctx.store.connection()):
            return
        try:
            acquire(self.ctx, queue, n, now)
        except (CentralUnavailable, CentralRejected) as exc:
            if not self._unreachable:
                log.warning("no job fetched for the idle pilots of queue %s: %s", queue.name, exc)
            self._unreachable = True
            return
        self._unreachable = False

    def _hand_over(self, queue: QueueConfig, worker_id: int, seq: int, now: float) -> int | None:
        """The oldest job of the queue that no live worker runs, linked to the worker for job request `seq`."""
        with self.ctx.store.write() as conn:
            rows = jobs.for_idle_pilot(conn, queue.name, 1, worker_id)
            if not rows:
                return None
            panda_id = int(rows[0]["panda_id"])
            job_workers.hand_over(conn, panda_id, worker_id, seq, now)
            if rows[0]["state"] == JobState.FETCHED.value:
                transition(
                    conn,
                    [panda_id],
                    JobState.FETCHED,
                    JobState.RUNNING,
                    now=now,
                    reason=f"persistent worker {worker_id}",
                )
        return panda_id

    def _write_answer(
        self, worker_id: int, ap: Path, request: protocol.JobRequest, panda_id: int | None, stop: str, now: float
    ) -> None:
        """The answer file (the job, or the stop), then the request marked consumed."""
        entries = []
        if panda_id is not None:
            row = jobs.get(self.ctx.store.connection(), panda_id)
            if row is None:
                stop = stop or f"job {panda_id} is no longer known"
            else:
                entries = [pilot_job_entry(job_spec_of(row))]
        try:
            self.ctx.files.write_new_jobs(ap, request.seq, entries, stop="" if entries else stop)
        except protocol.ProtocolError:
            pass  # this sequence was answered before a crash: the pilot has it already
        self.ctx.files.mark_consumed(ap, request.path)
        if entries:
            self._handed[worker_id] = now
            log.info(
                "worker %d: idle pilot takes job %d (job request %d)",
                worker_id,
                panda_id,
                request.seq,
                extra={"worker_id": worker_id, "panda_id": panda_id},
            )
        else:
            log.info("worker %d: idle pilot told to stop: %s", worker_id, stop, extra={"worker_id": worker_id})
