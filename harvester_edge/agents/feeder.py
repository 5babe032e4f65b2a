"""Feeder: answer the pilots' event requests from a local stock of ranges, topped up from the central service.

Per request: the ranges are assigned to the worker (DISPATCHED, with the request's sequence) and committed, THEN
the ranges file is written, THEN the request is marked consumed. After a crash anywhere in between, the same request
is answered again with exactly the ranges already assigned to it, so a pilot never gets a range twice or loses one.
The stock (FETCHED ranges per job) is kept at about one request's worth per running rank, so pilots never wait for
a round trip to the central service.

The tail of a task: "no more ranges" ends a pilot, so it is told only when nothing could still come: the central
service had none ready at the last fetch, the stock is empty, no range of the task is in flight at any worker and no
range report is waiting in the outbox (a failed or not-done report makes its range ready again). Until then a
request that gets nothing is HELD (left unanswered; the pilot does not ask again while one request is open) and
looked at every cycle: ranges that become ready again (a dead worker's, a drained one's, a failed attempt's; the
propagator clears the job's no-more flag when it sends such a report) reach a running pilot within one cycle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from harvester_edge.agents.base import Agent
from harvester_edge.central.client import CentralRejected, CentralUnavailable
from harvester_edge.seams import files as protocol  # the pilot-file seam (offline replay records it)
from harvester_edge.states import JOB_ACTIVE, RangeState
from harvester_edge.store import job_workers, jobs, outbox
from harvester_edge.store import ranges as held_ranges
from harvester_edge.store import workers as worker_rows
from harvester_edge.store.rows import transition_each
from harvester_edge.workers import range_limit

log = logging.getLogger(__name__)

R = RangeState
ACTIVE_JOB = tuple(s.value for s in JOB_ACTIVE)
GROUP_ANSWERS = 500  # answers committed in one transaction (bounds the write lock's hold and a crash's redo)


@dataclass
class Answer:
    """A request's answer: the ranges per job (assigned to the worker in the book before the file is written)."""

    worker_id: int
    ap: Path
    request: protocol.Request
    ranges: dict[int, list[dict]]
    no_more: set[int]
    ids: list[str]


class Feeder(Agent):
    name = "feeder"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._planned: list[Answer] = []  # answers of this cycle not yet committed (see flush)
        # their ranges per job: no longer in stock for the next request of the job
        self._planned_ids: dict[int, set[str]] = {}
        # each job's stock as read once (range_id, spec), first event first: read again after a fetch for the job
        # and after each flush, instead of one sorted stock query per request (its cost grew with the stock)
        self._stock_read: dict[int, list[tuple[str, str]]] = {}

    def run_cycle(self, now: float) -> None:
        try:
            for worker in worker_rows.in_batch(self.ctx.store.connection()):
                try:
                    self.answer_worker(worker, now)
                except Exception:  # one worker's files never stop the others' supply
                    log.exception(
                        "worker %d: its range requests were not answered this cycle",
                        worker["id"],
                        extra={"worker_id": worker["id"]},
                    )
                if len(self._planned) >= GROUP_ANSWERS:
                    self.flush(now)
        finally:
            self.flush(now)
        self.top_up(now)

    def answer_worker(self, worker, now: float) -> None:
        ap, worker_id = Path(worker["access_point"]), worker["id"]
        for _, request in self.ctx.files.each_pending(
            worker_id, ap, protocol.REQUESTS, self.ctx.files.load_event_request
        ):
            request = self.checked(worker_id, int(worker["ranks"] or 1), request)
            if not self.answer(worker_id, ap, request, now):
                break  # held, or the central service is unreachable: look again next cycle, in order

    def checked(self, worker_id: int, ranks: int, request: protocol.Request) -> protocol.Request:
        """The request as far as this worker may ask: its own jobs only, at most range_limit(ranks) per job."""
        mine = set(job_workers.jobs_of_worker(self.ctx.store.connection(), worker_id))
        limit = range_limit(ranks)
        wants: dict[int, dict] = {}
        for pid, want in request.requests.items():
            if pid not in mine:
                log.warning(
                    "worker %d: %s asks ranges of job %d, which is not one of its jobs %s; ignored",
                    worker_id,
                    request.path.name,
                    pid,
                    sorted(mine),
                    extra={"worker_id": worker_id},
                )
                continue
            asked = int(want["nRanges"])
            if asked > limit:
                log.warning(
                    "worker %d: %s asks %d ranges of job %d; granted %d (ranks %d x (prefetch + 1))",
                    worker_id,
                    request.path.name,
                    asked,
                    pid,
                    limit,
                    ranks,
                    extra={"worker_id": worker_id},
                )
            wants[pid] = {**want, "nRanges": min(asked, limit)}
        return replace(request, requests=wants)

    def answer(self, worker_id: int, ap: Path, request: protocol.Request, now: float) -> bool:
        store = self.ctx.store
        answered = held_ranges.answered(store.connection(), worker_id, request.seq)
        no_more: set[int] = set()
        if answered:  # a crash came between the commit and the ranges file: send the same ranges again
            ranges: dict[int, list[dict]] = {}
            for row in answered:
                ranges.setdefault(row["panda_id"], []).append(json.loads(row["spec"]))
            no_more = {pid for pid in request.requests if pid not in ranges and self._nothing_can_come(pid)}
        else:
            ranges = {}
            for pid, want in request.requests.items():
                n = int(want["nRanges"])  # validated >= 1 and clamped by checked()
                got = self._take(pid, n, now)
                if got is None:
                    return False
                ranges[pid] = got
                if len(got) < n and self._nothing_can_come(pid):
                    no_more.add(pid)
            if not any(ranges.values()) and not no_more and request.requests:
                log.debug(
                    "worker %d: request %d held: no range ready now, %s",
                    worker_id,
                    request.seq,
                    "some in flight may come back",
                    extra={"worker_id": worker_id},
                )
                return False  # nothing now, but ranges in flight may come back: answer when they do
            ids = [r["eventRangeID"] for lst in ranges.values() for r in lst]
            self._planned.append(Answer(worker_id, ap, request, ranges, no_more, ids))
            for pid, lst in ranges.items():
                self._planned_ids.setdefault(pid, set()).update(r["eventRangeID"] for r in lst)
            return True
        self.deliver(Answer(worker_id, ap, request, ranges, no_more, []))
        return True

    def flush(self, now: float) -> None:
        """Commit the answers planned so far, all in one transaction, THEN write their ranges files and mark their
        requests consumed (module doc: a crash after the commit answers each request again, identically). If the
        group cannot commit (a range left the stock meanwhile), each answer is tried alone; one that fails stays
        unanswered and its request is looked at again next cycle."""
        planned, self._planned, self._planned_ids = self._planned, [], {}
        self._stock_read = {}
        if not planned:
            return
        try:
            with self.ctx.store.write() as conn:
                self._assign(conn, planned, now)
            done = planned
        except Exception:
            log.warning("%d answers failed to commit together: committing them one by one", len(planned))
            done = []
            for a in planned:
                try:
                    with self.ctx.store.write() as conn:
                        self._assign(conn, [a], now)
                except Exception:
                    log.exception(
                        "worker %d: request %d not answered this cycle",
                        a.worker_id,
                        a.request.seq,
                        extra={"worker_id": a.worker_id},
                    )
                    continue
                done.append(a)
        for a in done:
            try:
                self.deliver(a)
            except Exception:  # committed: answered again from the book next cycle
                log.exception(
                    "worker %d: ranges file of request %d not written this cycle",
                    a.worker_id,
                    a.request.seq,
                    extra={"worker_id": a.worker_id},
                )

    @staticmethod
    def _assign(conn, answers: list[Answer], now: float) -> None:
        """The answers' ranges to their workers (FETCHED -> DISPATCHED, with each request's sequence): two
        statements for all of them."""
        held_ranges.assign_each(conn, [(i, a.worker_id, a.request.seq) for a in answers for i in a.ids])
        pairs = [(i, f"worker {a.worker_id} seq {a.request.seq}") for a in answers for i in a.ids]
        transition_each(conn, pairs, R.FETCHED, R.DISPATCHED, now=now)

    def deliver(self, a: Answer) -> None:
        """Write the ranges file of a committed answer, then mark its request consumed."""
        worker_id, ap, request, ranges, no_more = a.worker_id, a.ap, a.request, a.ranges, a.no_more
        try:
            self.ctx.files.write_event_ranges(ap, request.seq, {p: r for p, r in ranges.items() if r}, no_more=no_more)
        except protocol.ProtocolError:
            pass  # this sequence was written before the crash: the pilot has it already
        self.ctx.files.mark_consumed(ap, request)
        if no_more:
            log.info(
                "worker %d: told no more ranges for job(s) %s: none ready, none in flight",
                worker_id,
                sorted(no_more),
                extra={"worker_id": worker_id},
            )
        log.debug(
            "worker %d: answered request %d with %d ranges%s",
            worker_id,
            request.seq,
            sum(len(r) for r in ranges.values()),
            f", no more for {sorted(no_more)}" if no_more else "",
            extra={"worker_id": worker_id},
        )

    def _nothing_can_come(self, panda_id: int) -> bool:
        """No range will come for this job: it ended, or none is ready (no-more flag), in stock, in flight at any
        worker of its task, or reported and not yet sent (a failed/not-done report makes its range ready again).
        Ranges other sites hold at the central service are not seen here."""
        if not self._exhausted(panda_id):
            return False
        conn = self.ctx.store.connection()
        row = jobs.brief(conn, panda_id)
        if not row or row["state"] not in ACTIVE_JOB:
            return True
        if jobs.task_has_ranges_held(conn, row["task_id"]):
            return False
        return not outbox.range_reports_pending(conn)

    def _exhausted(self, panda_id: int) -> bool:
        row = jobs.brief(self.ctx.store.connection(), panda_id)
        return not row or bool(row["no_more_ranges"]) or row["state"] not in ACTIVE_JOB

    def _take(self, panda_id: int, n: int, now: float) -> list[dict] | None:
        """Up to n ranges of the job from the stock, fetching what is missing; None if the central is unreachable."""
        stock = self._stock(panda_id, n)
        if len(stock) < n and not self._exhausted(panda_id):
            if not self._fetch(panda_id, n - len(stock) + n, now) and not stock:
                return None
            stock = self._stock(panda_id, n)
        return stock

    def _stock(self, panda_id: int, n: int) -> list[dict]:
        """The first n ranges of the job's stock that no answer planned since the last flush took yet (only those
        are decoded). The stock is read once per job between flushes and fetches (_stock_read), whatever the number
        of requests answered from it."""
        planned = self._planned_ids.get(panda_id, set())
        stock = self._stock_read.get(panda_id)
        if stock is None:
            rows = held_ranges.stock_rows(self.ctx.store.connection(), panda_id, -1)
            stock = self._stock_read[panda_id] = [(rid, spec) for rid, spec in rows]
        out: list[dict] = []
        for rid, spec in stock:
            if rid not in planned:
                out.append(json.loads(spec))
                if len(out) == n:
                    break
        return out

    def _fetch(self, panda_id: int, n: int, now: float) -> bool:
        job = jobs.brief(self.ctx.store.connection(), panda_id)
        if not job or job["state"] not in ACTIVE_JOB:
            return True
        task_id, jobset_id = job["task_id"], job["jobset_id"]
        try:  # the job's own jobsetID (a real server's jobs have one of their own; the embedded's is the task id)
            got = self.central.acquire_event_ranges(
                panda_id, task_id if jobset_id is None else jobset_id, task_id=task_id, n_ranges=n
            )
        except CentralUnavailable as exc:
            log.warning("job %d: no ranges fetched: %s", panda_id, exc, extra={"panda_id": panda_id})
            return False
        except CentralRejected as exc:
            log.error(
                "job %d: the central service refused ranges: %s; no more ranges for it",
                panda_id,
                exc,
                extra={"panda_id": panda_id},
            )
            got = []
        self._stock_read.pop(panda_id, None)  # its stock changes: read again
        with self.ctx.store.write() as conn:
            held_ranges.insert_fetched(conn, panda_id, got, now)
            siblings = 0
            if len(got) < n:
                jobs.set_no_more_ranges(conn, panda_id, now)
                siblings = jobs.drained_for_waiting_siblings(conn, panda_id, now)
        if len(got) < n:
            log.info(
                "job %d: the central service has no more ranges for now (%d of %d)",
                panda_id,
                len(got),
                n,
                extra={"panda_id": panda_id},
            )
            if siblings:
                log.info(
                    "job %d: %d job(s) of its task waiting for a worker get none while no ranges are ready",
                    panda_id,
                    siblings,
                    extra={"panda_id": panda_id},
                )
        return True

    def top_up(self, now: float) -> None:
        """Keep about one request's worth of ranges per running rank in stock for each job that has workers."""
        rows = jobs.ranks_to_supply(self.ctx.store.connection())
        for row in rows:
            want = 2 * int(row["ranks"])
            have = held_ranges.stock_size(self.ctx.store.connection(), row["panda_id"])
            if have < want // 2:
                self._fetch(row["panda_id"], want - have, now)
