"""Propagator: drain the outbox to the central service in order, heartbeat running jobs, settle finished jobs.

The outbox survives an outage of any length: a message is marked sent only after the central service took it, and
re-sending one after a crash is harmless (the service ignores duplicate and stale range reports). A message the
service rejects for good (a refusal of the content) is parked as `rejected` with the reason, for the operator, and
draining goes on. A credential problem (HTTP 403: expired, revoked, missing token) is never a reason to park: the
client renews and retries once, and if the service still says 403 the message stays pending like in an outage.

HTTP 500 vs an outage: an outage is no answer at all (refused, reset, timed out) or a gateway's 502/503/504, and
keeps messages pending for as long as it lasts. A 500 is the service's own code failing AFTER it got the request.
For update_event_ranges that is not a reason to wait: the real PanDA server (1.0.x) builds its answer as a set
literal and fails with 500 ("unhashable type") after updateEventRanges has written the ranges, and re-sending a
range report is idempotent on both sides (a duplicate or stale report is a no-op). So a 500 with that known
defect's text counts as applied at once, and any other 500 on that call is re-sent at most MAX_SERVER_ERRORS times
(one try per cycle) and then counted as applied-or-given-up: marked sent, with the reason kept in last_error and
logged. It can never hold the outbox behind it. Job updates (update_jobs_bulk: the real server answers per job
and catches its own errors) keep treating a 500 as transient. The real server's success=false "TimeOut" (its
database layer failed or was slow; per job: StatusCode 10) is an outage too: the message is kept, never parked.
"""

from __future__ import annotations

import json
import logging

from harvester_edge.agents.base import Agent
from harvester_edge.central.client import (
    CentralAuthFailed,
    CentralRejected,
    CentralServerError,
    CentralTimeout,
    CentralUnavailable,
)
from harvester_edge.codes import StatusCode
from harvester_edge.outbox import enqueue, pending
from harvester_edge.states import JobState, OutboxState, RangeState, WorkerState
from harvester_edge.store import jobs as job_rows
from harvester_edge.store import outbox, ranges, transition, workers

log = logging.getLogger(__name__)

J, O, R, W = JobState, OutboxState, RangeState, WorkerState  # noqa: E741 (O: the outbox states)
HEARTBEAT_EVERY = 60.0  # seconds between job heartbeats to the central service
MAX_SERVER_ERRORS = 3  # HTTP 500 answers to one range report before it counts as applied-or-given-up
KNOWN_500 = "unhashable type"  # the real server's update_event_ranges answer-after-write defect (module doc)


class Propagator(Agent):
    name = "propagator"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._last_heartbeat = 0.0
        self._outage_logged = False

    def run_cycle(self, now: float) -> None:
        if not self.drain_outbox(now):
            return
        self.settle_jobs(now)
        self.drain_outbox(now)
        if now - self._last_heartbeat >= HEARTBEAT_EVERY:
            self.heartbeat(now)

    def drain_outbox(self, now: float) -> bool:
        """Send pending messages oldest first; False if the central service is unreachable.

        The messages the service took are marked sent together, in one transaction per batch read (and before any
        other outcome is written, so the marks stay in id order): a crash before that commit re-sends them, which
        is harmless (module doc)."""
        while True:
            messages = pending(self.ctx.store.connection(), 100)
            sent: list = []
            if not messages:
                if self._outage_logged:
                    log.info("central service reachable again: outbox drained")
                    self._outage_logged = False
                return True
            for message in messages:
                payload = json.loads(message["payload"])
                try:
                    self._send(message["kind"], payload)
                except CentralServerError as exc:
                    self._mark_sent(sent, now)
                    if message["kind"] != "update_event_ranges":
                        if not self._kept(message, exc, now):
                            return False
                        continue
                    if KNOWN_500 in exc.body or message["attempts"] + 1 >= MAX_SERVER_ERRORS:
                        why = (
                            "the server's known answer-after-write defect: the ranges were written"
                            if KNOWN_500 in exc.body
                            else f"{message['attempts'] + 1} HTTP 500 answers: counted as applied-or-given-up"
                        )
                        log.warning("outbox message %d (update_event_ranges): %s (%s)", message["id"], why, exc)
                        with self.ctx.store.write() as conn:
                            outbox.count_given_up_try(conn, message["id"], f"HTTP 500: {why}"[:500])
                            transition(conn, [message["id"]], O.PENDING, O.SENT, now=now, reason=why[:200])
                        continue
                    self._kept(message, exc, now)
                    return False  # re-sent next cycle, at most MAX_SERVER_ERRORS times
                except CentralUnavailable as exc:
                    self._mark_sent(sent, now)
                    with self.ctx.store.write() as conn:
                        outbox.count_failed_try(conn, message["id"], str(exc)[:500], now)
                    if not self._outage_logged:
                        why = (
                            "credentials refused (the token is renewed, then retried)"
                            if isinstance(exc, CentralAuthFailed)
                            else "central service unreachable"
                        )
                        log.warning("%s, %d+ messages kept in the outbox: %s", why, len(messages), exc)
                        self._outage_logged = True
                    return False
                except CentralRejected as exc:
                    self._mark_sent(sent, now)
                    log.error(
                        "outbox message %d (%s) rejected by the central service, parked: %s",
                        message["id"],
                        message["kind"],
                        exc,
                    )
                    with self.ctx.store.write() as conn:
                        outbox.set_error(conn, message["id"], str(exc)[:500])
                        transition(conn, [message["id"]], O.PENDING, O.REJECTED, now=now, reason=str(exc)[:200])
                    continue
                sent.append((message["id"], message["kind"], payload))
            self._mark_sent(sent, now)

    def _mark_sent(self, sent: list, now: float) -> None:
        """Mark messages the central service took as sent, in one transaction; empties `sent`."""
        if not sent:
            return
        with self.ctx.store.write() as conn:
            transition(conn, [m[0] for m in sent], O.PENDING, O.SENT, now=now)
            reports = [r for _, kind, payload in sent if kind == "update_event_ranges" for r in payload]
            self._ranges_ready_again(conn, reports, now)
        sent.clear()

    @staticmethod
    def _ranges_ready_again(conn, reports: list[dict], now: float) -> None:
        """The central service now knows of failed / not-done ranges: unless out of attempts they are ready again,
        so jobs of their tasks that still have workers may fetch again (the feeder hands them to the pilots that are
        still asking, in its next cycle). Jobs without workers are settled below, from the service's count."""
        failed = [r["eventRangeID"] for r in reports if r.get("eventStatus") == "failed"]
        if not failed:
            return
        job_rows.reopen_for_ranges(conn, failed, now)

    def _kept(self, message, exc: Exception, now: float) -> bool:
        """Count a failed try of a message that stays pending; False: stop draining this cycle."""
        with self.ctx.store.write() as conn:
            outbox.count_failed_try(conn, message["id"], str(exc)[:500], now)
        if not self._outage_logged:
            log.warning("central service failed (%s): outbox message %d kept", exc, message["id"])
            self._outage_logged = True
        return False

    def _send(self, kind: str, payload) -> None:
        central = self.central
        if kind == "update_event_ranges":
            central.update_event_ranges(payload, version=0)
        elif kind == "update_jobs":
            answers = central.update_jobs_bulk(payload, harvester_id=self.ctx.config.site)
            if any(
                a["StatusCode"] == StatusCode.TIMEOUT for a in answers
            ):  # a job's update timed out: the whole message again
                raise CentralTimeout(
                    "update_jobs_bulk: the central service timed out on "
                    f"{sum(a['StatusCode'] == StatusCode.TIMEOUT for a in answers)} job update(s); retry later"
                )
            for update, answer in zip(payload, answers):
                if not answer["ok"]:  # the service took the message and answered for this job: re-sending won't help
                    log.warning(
                        "job %s: the central service refused its update to %s: StatusCode %s %s",
                        update.get("jobId", update.get("job_id")),
                        update.get("state", update.get("job_status")),
                        answer["StatusCode"],
                        answer["ErrorDiag"],
                    )
        else:
            raise CentralRejected(f"unknown outbox message kind {kind!r}")

    def settle_jobs(self, now: float) -> None:
        """Jobs without active workers: finish them when the task has no ranges left, else let new workers come."""
        store = self.ctx.store
        idle = job_rows.without_work(store.connection())
        for job in idle:
            if job["state"] == J.FETCHED.value:
                if not job["no_more_ranges"]:
                    continue  # waiting for its first worker
                conn = store.connection()
                if job_rows.task_has_ranges_held(conn, job["task_id"]) or outbox.range_reports_pending(conn):
                    # its pool ran dry while a sibling of its task runs the ranges here (feeder): it waits with no
                    # worker. Finishing it now would only make the service send a replacement job
                    continue
            try:
                available = int(
                    self.central.available_range_count(
                        job["task_id"],
                        job["panda_id"],
                        job["task_id"] if job["jobset_id"] is None else job["jobset_id"],
                    )
                )
            except (CentralUnavailable, CentralRejected) as exc:
                log.warning("job %d: cannot ask for the task's remaining ranges: %s", job["panda_id"], exc)
                return
            stock = ranges.stock_count(store.connection(), job["panda_id"])
            spec = json.loads(job["spec"])
            per_range = int(spec.get("eventsPerRange") or 1)
            with store.write() as conn:
                if available or stock:
                    job_rows.set_events_total(
                        conn, job["panda_id"], job["events_done"] + (available + stock) * per_range, now
                    )
                    if job["no_more_ranges"]:
                        log.info(
                            "job %d: %d ranges are ready again: more workers will run it",
                            job["panda_id"],
                            available + stock,
                            extra={"panda_id": job["panda_id"]},
                        )
                    continue
                if job["state"] == J.FETCHED.value:
                    transition(conn, [job["panda_id"]], J.FETCHED, J.RUNNING, now=now)
                transition(conn, [job["panda_id"]], J.RUNNING, J.FINISHED, now=now, reason="no ranges left")
                enqueue(
                    conn,
                    "update_jobs",
                    [{"jobId": job["panda_id"], "state": "finished", "nEvents": job["events_done"], "endTime": now}],
                    now,
                )
            log.info(
                "job %d finished: %d events processed by this site",
                job["panda_id"],
                job["events_done"],
                extra={"panda_id": job["panda_id"], "task_id": job["task_id"]},
            )

    def heartbeat(self, now: float) -> None:
        jobs = job_rows.running_progress(self.ctx.store.connection())
        self._last_heartbeat = now
        if not jobs:
            return
        updates = [{"jobId": j["panda_id"], "state": "running", "nEvents": j["events_done"]} for j in jobs]
        try:
            answers = self.central.update_jobs_bulk(updates, harvester_id=self.ctx.config.site)
        except (CentralUnavailable, CentralRejected) as exc:
            log.warning("job heartbeat not sent: %s", exc)
            return
        for job, answer in zip(jobs, answers or []):
            command = answer.get("command") if isinstance(answer, dict) else None
            if command in ("tobekilled", "softkill"):
                self.kill_job(job["panda_id"], command, now)

    def kill_job(self, panda_id: int, command: str, now: float) -> None:
        with self.ctx.store.write() as conn:
            workers.flag_of_job(conn, panda_id, now)
            transition(conn, [panda_id], J.RUNNING, J.CANCELLED, now=now, reason=f"central command {command}")
            stock = ranges.stock_ids(conn, panda_id)
            transition(conn, stock, R.FETCHED, R.RELEASED, now=now, reason="job killed centrally")
        log.info(
            "job %d: the central service says %s: its workers are cancelled",
            panda_id,
            command,
            extra={"panda_id": panda_id},
        )
