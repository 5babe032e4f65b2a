"""The work loop every rank runs (rank 0 too, beside its dispatcher thread): take ranges, run them, report.

Pull with prefetch: a rank asks for ``prefetch + 1`` ranges at start and for one more with every result, so the
next range is already local when one ends. When ranges are so short that the answer comes too late (the local
queue ran dry), the rank deepens its queue by one, as long as the queue holds less than LATENCY_BUDGET seconds of
work: tiny ranges get a deep queue, long ranges keep ``prefetch`` (no imbalance at the end). With a worker child,
the next ranges (AHEAD_BUDGET seconds of work) are handed to the child before the current one ends, so the child
never waits for the rank, even while the rank fsyncs an output on a busy disk; a range handed over only after the
child had finished the one before (the rank was descheduled longer) gives the child one more, up to LATENCY_BUDGET.
Results of short ranges travel together: a finished range's result (its output already fsynced) waits on the rank
for the next ones while the oldest is younger than REPORT_WINDOW, so rank 0 wakes once for several ranges; for
that, a rank with short ranges holds REPORT_WINDOW of work more (within LATENCY_BUDGET), and it reports at once
when it holds fewer than two ranges, and whenever it leaves or stops.
At the end of the work, the dispatcher may ask a rank to give back ranges it holds but has not handed to its child,
for idle ranks to run.
It stops taking work when asked to ("stop"), when a drain signal arrives,
or when its measured time per range no longer fits before the deadline; every range it holds but did not run goes
back as not-done. A payload killed by a signal while the batch system tears the step down is not-done too (the
range was not at fault); a payload killed on its own is a failed range.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from jumbo.execute import CODE_NO_OUTPUT, CODE_SIGNAL_BASE, Outcome, PayloadRunner
from jumbo.walltime import RangeTimer

log = logging.getLogger(__name__)

LATENCY_BUDGET = 0.1  # seconds of queued work that cover a dispatcher round trip, or rank 0 descheduled, on a busy node
MAX_DEPTH = 64
AHEAD_BUDGET = 0.03  # seconds of work a payload child holds beyond its current range (covers the rank's stalls)
MAX_AHEAD = 8  # and at most this many ranges, or LATENCY_BUDGET seconds, once it deepened (a late hand-over)
TEARDOWN_GRACE = 1.0  # seconds a rank waits, after its payload died of a signal, for the step's teardown signal
REPORT_WINDOW = 0.03  # seconds a finished range's result may wait for the next ones' (one message for several)


def output_path(ap: Path | str, panda_id: int, range_id: str, suffix: str) -> str:
    return os.path.join(ap, "outputs", str(panda_id), f"{range_id}{suffix}")  # a str: pathlib costs per range


def killed_by_signal(code: int) -> bool:
    """An outcome code of a payload killed by a signal: 128 + N, as jumbo.execute and shells report it."""
    return CODE_SIGNAL_BASE < code <= CODE_SIGNAL_BASE + 64


def seed_of(task_id: int, first_event: int) -> int:
    """A per-range seed that depends only on (task, first event), for command templates' {seed}."""
    return int(task_id) * 1_000_000_007 + int(first_event)


def not_done(task: dict, rank: int, why: str) -> dict:
    rng = task["range"]
    return {
        "PandaID": task["pid"],
        "eventRangeID": rng["eventRangeID"],
        "eventStatus": "not-done",
        "startEvent": rng["startEvent"],
        "lastEvent": rng["lastEvent"],
        "nEvents": rng["lastEvent"] - rng["startEvent"] + 1,
        "rank": rank,
        "errorCode": 0,
        "errorDiag": why,
    }


class Worker:
    """One rank's loop; ``run()`` returns when the dispatcher said stop and the rank said bye."""

    def __init__(
        self,
        channel,
        rank: int,
        ap: Path,
        jobs: dict[int, dict],
        runner: PayloadRunner,
        prefetch: int,
        deadline: float | None,
        drain: threading.Event,
        metrics: Callable[[], dict] = dict,
        pss_peak: Callable[[], int] | None = None,
    ):
        self.channel, self.rank, self.ap, self.jobs, self.runner = channel, rank, Path(ap), jobs, runner
        self.prefetch, self.deadline, self.drain, self.metrics = max(0, int(prefetch)), deadline, drain, metrics
        self.pss_peak = pss_peak  # the monitor's highest PSS (bytes) since the last call: a range's own peak
        self.timer = RangeTimer()
        self.cpu = 0.0
        self.counts = {"finished": 0, "failed": 0, "not-done": 0}
        self._dirs: set[int] = set()
        self._ap_str = str(self.ap)
        self.given_back = 0
        self.ahead_extra = 0
        self.ahead_peak = 1  # the largest ahead limit of the run (the limit at the end follows the last ranges' pace)
        self._held: list[dict] = []  # finished results not yet sent (see REPORT_WINDOW), and the credits they ask
        self._held_want = 0
        self._held_since = 0.0

    def run(self) -> None:
        local: deque = deque()
        ahead: deque = deque()  # (task, ticket): the next ranges, already in the payload child's hands, in order
        for job in self.jobs.values():  # the payload child imports while the first ranges travel
            self.runner.prestart(job["payload"])
        depth = self.prefetch + 1
        last_end = float("inf")  # the child's end of the previous range
        self.channel.send({"kind": "ready", "rank": self.rank, "want": depth})
        leaving = stopped = False
        while not stopped:
            msg = self.channel.poll(0.0 if (local or ahead) and not leaving else 0.05)
            while msg is not None:
                if msg["kind"] == "ranges":
                    local.extend(msg["tasks"])
                elif msg["kind"] == "jobs":  # a persistent pilot's next jobs, before their ranges
                    self.jobs.update(msg["jobs"])
                    for job in msg["jobs"].values():
                        self.runner.prestart(job["payload"])
                elif msg["kind"] == "give_back":
                    self._give_back(local, msg["n"])
                elif msg["kind"] == "stop":
                    stopped = True
                msg = self.channel.poll(0.0)
            if stopped or leaving:
                continue
            why = self._why_leave()
            if why:
                log.info("rank %d: leaving (%s); %d queued ranges go back as not-done", self.rank, why, len(local))
                results = self._take_held() + [self._settle(a, why) for a in ahead]
                ahead.clear()
                results += [self._count(not_done(t, self.rank, why)) for t in local]
                results = self._synced(results)
                self.channel.send({"kind": "leaving", "rank": self.rank, "reason": why, "results": results})
                local.clear()
                leaving = True
                continue
            if ahead:
                task, ticket = ahead.popleft()
                for _, later in ((task, ticket), *ahead):
                    self.runner.hand(later)  # back into a child, in order, if their child died
            elif local:
                task = local.popleft()
                ticket = self._submit(task)
            else:
                continue
            while local and len(ahead) < self._ahead_limit() and self._pipelines(task, local[0], len(ahead)):
                nxt = local.popleft()
                ahead.append((nxt, self._submit(nxt)))
            # ran dry: the next range was not here in time. With a worker child that means "not already in the
            # child's hands when this range started" (a range that arrives while this one runs waits for the rank
            # to hand it over); otherwise, an empty local queue.
            dry = not ahead and (not local or self.runner.pipelines(self.jobs[task["pid"]]["payload"]))
            result = self._finish(task, ticket)
            if ticket.submitted > last_end and self.runner.pipelines(self.jobs[task["pid"]]["payload"]):
                self.ahead_extra += 1  # handed after its child ran out of work: hand further ahead (capped)
            last_end = result.get("endTime", last_end)
            want = 1
            if dry and depth < MAX_DEPTH and (depth + 1) * self.timer.mean < LATENCY_BUDGET:
                depth += 1
                want += 1
            if depth < self._report_depth():  # room for the results that wait for the next ones
                want += self._report_depth() - depth
                depth = self._report_depth()
            self._hold(result, want, len(local) + len(ahead))
        leftovers = self._take_held() + [self._settle(a, "pilot stopped") for a in ahead]
        leftovers += [self._count(not_done(t, self.rank, "pilot stopped")) for t in local]
        leftovers = self._synced(leftovers)
        self.channel.send(
            {
                "kind": "bye",
                "rank": self.rank,
                "results": leftovers,
                "metrics": {
                    **self.metrics(),
                    "cpuTime": self.cpu,
                    "ranges": dict(self.counts),
                    "meanRangeTime": self.timer.mean,
                    "queueDepth": depth,
                    "childRestarts": self.runner.restarts,
                    "givenBack": self.given_back,
                    "aheadLimit": self._ahead_limit(),
                    "aheadLimitPeak": self.ahead_peak,
                },
            }
        )
        self.channel.close()

    def _report_depth(self) -> int:
        """The queue depth that lets results wait up to REPORT_WINDOW with work left to cover the round trip:
        REPORT_WINDOW of ranges plus three, while that is less than LATENCY_BUDGET of work (0: ranges too long)."""
        mean = self.timer.mean
        if mean <= 0 or mean >= REPORT_WINDOW:
            return 0
        depth = min(MAX_DEPTH, int(REPORT_WINDOW / mean) + 3)
        while depth > 0 and depth * mean >= LATENCY_BUDGET:
            depth -= 1
        return depth

    def _hold(self, result: dict, want: int, holds: int) -> None:
        """Send a finished range's result now, with any held ones, or hold it for the next ranges' (REPORT_WINDOW):
        at once when the rank holds fewer than two ranges (it needs its credits back), when the result is not
        finished, or when the oldest held result would wait longer than REPORT_WINDOW for the next range."""
        now = time.time()
        if not self._held:
            self._held_since = now
        self._held.append(result)
        self._held_want += want
        if holds < 2 or result["eventStatus"] != "finished" or now - self._held_since + self.timer.mean > REPORT_WINDOW:
            want, results = self._held_want, self._synced(self._take_held())
            self.channel.send({"kind": "result", "rank": self.rank, "results": results, "want": want})

    def _synced(self, results: list[dict]) -> list[dict]:
        """The results, once the outputs of the finished ones are fsynced (all at once: one journal commit for
        several); a finished range whose output cannot be made durable becomes a failed one, without its output.
        Every result leaves the rank through here: a range is reported finished only with its output on disk."""
        errors = self.runner.sync_outputs(
            [r["path"] for r in results if r["eventStatus"] == "finished" and "path" in r]
        )
        for result in results:
            exc = errors.get(result.get("path", ""))
            if exc is None or result["eventStatus"] != "finished":
                continue
            path = result.pop("path")
            log.warning("rank %d: range %s: output %s not durable: %s", self.rank, result["eventRangeID"], path, exc)
            self.counts["finished"] -= 1
            self.counts["failed"] += 1
            result.update(
                eventStatus="failed",
                errorCode=CODE_NO_OUTPUT,
                errorDiag=f"payload reported success but its output {path} cannot be fsynced ({exc})",
            )
            result.pop("fsize", None)
            result.pop("adler32", None)
            try:
                os.unlink(path)  # an output that may not survive a crash must not look like a result
            except OSError:
                pass
        return results

    def _take_held(self) -> list[dict]:
        """The held results (they go in the next message; their credits are dropped when the rank leaves or stops)."""
        results, self._held, self._held_want = self._held, [], 0
        return results

    def _give_back(self, local: deque, n: int) -> None:
        """The dispatcher has idle ranks and nothing queued: return up to ``n`` ranges this rank holds but has not
        handed to its payload child (the last ones), so an idle rank runs them. They were never started here and
        are not reported here: the dispatcher hands them out again (exactly once). The answer goes even if empty."""
        tasks = [local.pop() for _ in range(min(n, len(local)))][::-1]
        self.given_back += len(tasks)
        self.channel.send({"kind": "returned", "rank": self.rank, "tasks": tasks, "kept": len(local)})

    def _ahead_limit(self) -> int:
        """How many ranges the payload child gets beyond the one it runs: enough to cover AHEAD_BUDGET seconds (the
        rank's own stalls: an output's fsync on a busy disk, the rank descheduled), at least one, plus one for each
        range handed over too late, within LATENCY_BUDGET seconds and MAX_AHEAD ranges. Ranges in the child's
        hands are the rank's for good (never given back)."""
        mean = self.timer.mean
        if mean <= 0:
            return 1
        cap = max(1, min(MAX_AHEAD, int(LATENCY_BUDGET / mean)))
        limit = min(cap, max(1, int(AHEAD_BUDGET / mean)) + self.ahead_extra)
        self.ahead_peak = max(self.ahead_peak, limit)
        return limit

    def _pipelines(self, task: dict, nxt: dict, queued: int = 0) -> bool:
        """Hand ``nxt`` to the payload child now (behind ``queued`` others) if the same child runs them and they all
        fit before the deadline."""
        cur, after = self.jobs[task["pid"]]["payload"], self.jobs[nxt["pid"]]["payload"]
        return (
            self.runner.pipelines(cur)
            and self.runner.pipelines(after)
            and cur["callable"] == after["callable"]
            and (self.deadline is None or time.time() + (2 + queued) * self.timer.mean <= self.deadline)
        )

    def _settle(self, ahead: tuple, why: str) -> dict:
        """A range handed ahead when the rank stops: it runs (or waits) in the child, so let it finish."""
        task, ticket = ahead
        if self.runner.started(ticket):
            return self._finish(task, ticket)
        return self._count(not_done(task, self.rank, why))

    def _torn_down(self) -> bool:
        """A teardown signal (SIGTERM/SIGUSR1 to every process of the step) reached this rank, now or within
        TEARDOWN_GRACE: the payload child (which ignores those) was killed with the rest. A payload killed alone
        (the OOM killer, a signal it raised itself) leaves the rank untouched: a failure of the range."""
        return self.drain.is_set() or self.drain.wait(TEARDOWN_GRACE)

    def _why_leave(self) -> str:
        if self.drain.is_set():
            return "drain signal"
        if not self.timer.fits(time.time(), self.deadline):
            return "walltime: another range does not fit"
        return ""

    def _count(self, result: dict) -> dict:
        self.counts[result["eventStatus"]] += 1
        return result

    def _submit(self, task: dict):
        pid, rng = task["pid"], task["range"]
        job = self.jobs[pid]
        payload = job["payload"]
        first, rid = rng["startEvent"], rng["eventRangeID"]
        out = output_path(self._ap_str, pid, rid, payload.get("suffix", ".out"))
        if pid not in self._dirs:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            self._dirs.add(pid)
        context = {
            "task_id": job["taskID"],
            "panda_id": pid,
            "jobset_id": job.get("jobsetID"),
            "rank": self.rank,
            "seed": seed_of(job["taskID"], first),
            "event_range_id": rid,
            "args": payload.get("args", {}),
        }
        ticket = self.runner.submit(payload, first, rng["lastEvent"], out, context)
        ticket.submitted = time.time()
        return ticket

    def _finish(self, task: dict, ticket) -> dict:
        pid, rng = task["pid"], task["range"]
        payload = self.jobs[pid]["payload"]
        first, last, rid, out = rng["startEvent"], rng["lastEvent"], rng["eventRangeID"], ticket.output
        outcome = self.runner.collect(ticket, self.deadline, sync=False)  # fsynced in _synced, before it is reported
        if outcome.status == "failed" and killed_by_signal(outcome.code) and self._torn_down():
            # the batch system ended the step (scancel, a rank lost, the time limit): it killed the payload, the
            # payload did not fail, so the range goes back unprocessed and uses up none of its attempts
            log.warning(
                "rank %d: range %s: %s while the batch system tears the step down: reported not-done",
                self.rank,
                rid,
                outcome.message,
            )
            outcome = Outcome(
                "not-done", 0, f"not processed: {outcome.message} by the batch system's step teardown", outcome.cpu
            )
        # the child's own clock when it has one (a pipelined range starts before the rank looks at it)
        start, end = outcome.start or ticket.submitted, outcome.end or time.time()
        if outcome.status != "not-done":  # a range killed at the deadline says nothing about the time per range
            self.timer.add(end - start)
        self.cpu += outcome.cpu
        result = {
            "PandaID": pid,
            "eventRangeID": rid,
            "eventStatus": outcome.status,
            "startEvent": first,
            "lastEvent": last,
            "nEvents": last - first + 1,
            "startTime": start,
            "endTime": end,
            "cpuTime": outcome.cpu,
            "rank": self.rank,
            "errorCode": outcome.code,
            "errorDiag": outcome.message,
        }
        if self.pss_peak is not None:  # kB, as PanDA counts memory; 0: no monitor sample fell within the range
            result["maxPSS"] = int(self.pss_peak()) // 1024
        if outcome.status == "finished":
            if payload.get("output", True) is not False:
                result.update(path=out, fsize=outcome.fsize, adler32=outcome.adler32)
        else:
            if outcome.status == "failed":
                log.warning("rank %d: range %s failed: code %d, %s", self.rank, rid, outcome.code, outcome.message)
            try:
                os.unlink(out)  # a partial output must not look like a result
            except FileNotFoundError:
                pass
        return self._count(result)
