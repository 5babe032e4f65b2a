"""Fetcher: acquire jumbo jobs from the central service for queues with room."""

from __future__ import annotations

import logging

from harvester_edge import jobpayload
from harvester_edge.agents.base import Agent
from harvester_edge.central.client import CentralRejected, CentralUnavailable
from harvester_edge.store import jobs as job_rows
from harvester_edge.store import queues

log = logging.getLogger(__name__)


class Fetcher(Agent):
    name = "fetcher"

    def run_cycle(self, now: float) -> None:
        config = self.ctx.config
        for queue in config.queues:
            conn = self.ctx.store.connection()
            if queues.is_draining(conn, queue.name):
                log.info("queue %s is draining: fetching no jobs", queue.name, extra={"queue": queue.name})
                continue
            active = job_rows.active_count(conn, queue.name)
            # one job keeps several workers busy (ranges are taken task-wide): hold no more jobs than workers can run
            room = queue.max_running_workers - active
            if room <= 0:
                continue
            try:
                jobs = self.central.acquire_jobs(config.site, queue=queue.name, n_jobs=room, harvester_id=config.site)
            except CentralUnavailable as exc:
                log.warning("no jobs fetched for queue %s: %s", queue.name, exc)
                return
            except CentralRejected as exc:
                log.error("the central service refused to give jobs for queue %s: %s", queue.name, exc)
                continue
            if not jobs:
                continue
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
            with self.ctx.store.write() as conn:
                for job in jobs:
                    job_rows.insert_fetched(conn, job, queue.name, jobpayload.events_total(job), now)
            log.info(
                "fetched %d job(s) for queue %s: %s",
                len(jobs),
                queue.name,
                ", ".join(str(j["PandaID"]) for j in jobs),
                extra={"queue": queue.name},
            )
