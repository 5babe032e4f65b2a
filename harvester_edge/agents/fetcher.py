"""Fetcher: acquire jumbo jobs from the central service for queues with room."""

from __future__ import annotations

import logging
from typing import Any

from harvester_edge import jobpayload
from harvester_edge.agents.base import Agent, AgentContext
from harvester_edge.central.client import CentralRejected, CentralUnavailable
from harvester_edge.config import QueueConfig
from harvester_edge.store import jobs as job_rows
from harvester_edge.store import meta, queues

log = logging.getLogger(__name__)


def acquire(ctx: AgentContext, queue: QueueConfig, n_jobs: int, now: float) -> list[dict]:
    """Up to n_jobs jobs of tasks that fit the queue from the central service, into the book as FETCHED (the
    fetcher's cycle, and an idle persistent pilot's request: agents/persistent.py). CentralUnavailable and
    CentralRejected pass to the caller."""
    if ctx.central is None:
        raise RuntimeError("fetcher: this agent context has no central client")
    resources: dict[str, Any] = queue.brokerage  # memory per rank and cores: only jobs that fit
    jobs = ctx.central.acquire_jobs(
        ctx.config.site, queue=queue.name, n_jobs=n_jobs, harvester_id=ctx.config.site, **resources
    )
    if not jobs:
        return []
    kept = []
    for job in jobs:  # a real server's job (no payload extension) gets its command payload here
        try:
            kept.append(jobpayload.pilot_job(job))
        except jobpayload.JobPayloadError as exc:
            log.error(
                "job %s cannot run here and is left alone: %s",
                job.get("PandaID"),
                exc,
                extra={"queue": queue.name},
            )
    jobs = kept
    with ctx.store.write() as conn:
        for job in jobs:
            job_rows.insert_fetched(conn, job, queue.name, jobpayload.events_total(job), now)
    log.info(
        "fetched %d job(s) for queue %s: %s",
        len(jobs),
        queue.name,
        ", ".join(str(j["PandaID"]) for j in jobs),
        extra={"queue": queue.name},
    )
    return jobs


class Fetcher(Agent):
    name = "fetcher"

    def run_cycle(self, now: float) -> None:
        config = self.ctx.config
        shortage = self.check_work_shortage(now)
        for queue in config.queues:
            conn = self.ctx.store.connection()
            if queues.is_draining(conn, queue.name):
                log.info("queue %s is draining: fetching no jobs", queue.name, extra={"queue": queue.name})
                continue
            if shortage and queue.opportunistic:
                log.info(
                    "queue %s is opportunistic and the central service declares a work shortage: fetching no jobs",
                    queue.name,
                    extra={"queue": queue.name},
                )
                continue
            active = job_rows.active_count(conn, queue.name)
            # one job keeps several workers busy (ranges are taken task-wide): hold no more jobs than workers can run
            room = queue.max_running_workers - active
            if room <= 0:
                continue
            try:
                acquire(self.ctx, queue, room, now)
            except CentralUnavailable as exc:
                log.warning("no jobs fetched for queue %s: %s", queue.name, exc)
                return
            except CentralRejected as exc:
                log.error("the central service refused to give jobs for queue %s: %s", queue.name, exc)
                continue

    def check_work_shortage(self, now: float) -> bool:
        """Ask the central service about a WORK_SHORTAGE when a queue cares (opportunistic or pledged_cores), and
        keep the answer for the submitter; unreachable: the last answer stands."""
        config = self.ctx.config
        if not any(q.opportunistic or q.pledged_cores for q in config.queues):
            return False
        try:
            shortage = bool(self.central.work_shortage().get("shortage"))
        except (CentralUnavailable, CentralRejected) as exc:
            log.warning("work shortage not known this cycle (the last answer stands): %s", exc)
            last = meta.work_shortage(self.ctx.store.connection())
            return bool(last and last[0])
        with self.ctx.store.write() as conn:
            before = meta.work_shortage(conn)
            meta.set_work_shortage(conn, shortage, now)
        if before is None or before[0] != shortage:
            log.info(
                "the central service %s a work shortage: opportunistic queues %s, pledged queues %s",
                "declares" if shortage else "ends",
                "get no new jobs or workers" if shortage else "run again",
                "keep within their pledge" if shortage else "use their usual limits",
            )
        return shortage
