"""Sweeper: cancel what must die (killed jobs, kill requests, workers queued too long or with a lost heartbeat),
remove finished access points after a delay (archived first if paths.archives is set), and forget what ended long
ago so the DB stays small."""

from __future__ import annotations

import logging
from pathlib import Path

from harvester_edge.agents.base import Agent
from harvester_edge.batch import BatchError
from harvester_edge.states import WorkerState
from harvester_edge.store import history, job_workers, jobs, outbox, ranges, transition, workers

log = logging.getLogger(__name__)
W = WorkerState
PRUNE_JOBS = 20  # per cycle: a job may hold thousands of ranges, and the write lock stays short
PRUNE_ROWS = 20_000  # per cycle, of the append-only tables (state history, sent messages), oldest first
PRUNE_EVERY = 3600.0  # seconds between pruning passes once one found less than its limits to do


class Sweeper(Agent):
    name = "sweeper"
    _next_prune = 0.0

    def run_cycle(self, now: float) -> None:
        self.flag_stuck(now)
        self.cancel_requested(now)
        self.clean(now)
        self.prune(now)

    def flag_stuck(self, now: float) -> None:
        daemon = self.ctx.config.daemon
        with self.ctx.store.write() as conn:
            queued = workers.flag_queued_too_long(
                conn, f"queued longer than {daemon.queued_timeout:.0f}s", now, now - daemon.queued_timeout
            )
            silent = workers.flag_silent(
                conn, f"pilot heartbeat lost for {daemon.heartbeat_timeout:.0f}s", now, now - daemon.heartbeat_timeout
            )
        for row in queued:
            log.info("worker %d queued too long: cancelling it", row[0], extra={"worker_id": row[0]})
        for row in silent:
            log.warning(
                "worker %d: pilot heartbeat lost for %.0fs: cancelling it",
                row[0],
                daemon.heartbeat_timeout,
                extra={"worker_id": row[0]},
            )

    def cancel_requested(self, now: float) -> None:
        store = self.ctx.store
        with store.write() as conn:  # not submitted yet: cancel in the book only
            unsent = workers.kill_requested_new(conn)
            transition(conn, unsent, W.NEW, W.CANCELLED, now=now, reason="kill requested before submission")
        rows = workers.kill_requested_in_batch(store.connection())
        by_queue: dict[str, list] = {}
        for row in rows:
            by_queue.setdefault(row["queue"], []).append(row)
            try:  # the pilot drains first if it can: in-flight ranges finish and are reported
                self.ctx.files.request_drain(Path(row["access_point"]), "kill requested by the harvester")
            except OSError:
                pass
        for queue, queue_rows in by_queue.items():
            try:
                errors = self.ctx.plugins[queue].cancel([r["batch_id"] for r in queue_rows])
            except BatchError as exc:
                log.warning("cancel of %d workers on %s failed, retrying next cycle: %s", len(queue_rows), queue, exc)
                continue
            for row in queue_rows:
                if errors.get(row["batch_id"]):
                    log.warning(
                        "worker %d (%s): cancel failed: %s",
                        row["id"],
                        row["batch_id"],
                        errors[row["batch_id"]],
                        extra={"worker_id": row["id"]},
                    )
            # the monitor sees them CANCELLED on its next status call and hands their ranges back

    def clean(self, now: float) -> None:
        """Remove the access points of workers that ended cleanup_delay ago, each archived first when paths.archives
        is set; one whose archive cannot be written stays (and is tried again next cycle): nothing is lost."""
        delay = self.ctx.config.daemon.cleanup_delay
        rows = workers.uncleaned_ended(self.ctx.store.connection(), now - delay)
        cleaned = [row["id"] for row in rows if self.archive(row["id"], row["access_point"], now)]
        for row in rows:
            if row["id"] in cleaned:
                self.ctx.files.remove_access_point(row["access_point"])
        if cleaned:
            with self.ctx.store.write() as conn:
                workers.mark_cleaned(conn, cleaned, now)
            log.info("removed %d finished access points (older than %.0fs)", len(cleaned), delay)

    def archive(self, worker_id: int, ap: str, now: float) -> bool:
        """Archive an access point if archives are kept; False if that failed (the access point must stay)."""
        where = self.ctx.config.paths.archives
        if where is None:
            return True
        try:
            self.ctx.files.archive_access_point(ap, where, worker_id, self.ctx.config.daemon.archive_max_mb << 20, now)
        except OSError as exc:
            log.error(
                "worker %d: access point %s not archived to %s, kept until it can be: %s",
                worker_id,
                ap,
                where,
                exc,
                extra={"worker_id": worker_id},
            )
            return False
        return True

    def prune(self, now: float) -> None:
        """Delete jobs that ended more than daemon.keep_history ago with their ranges and workers (once every worker
        ended and its access point is gone), and older state history and sent messages. Nothing is pruned while a
        message waits for the central service: the rows it reports on stay until it is accepted."""
        if now < self._next_prune:
            return
        cutoff = now - self.ctx.config.daemon.keep_history
        with self.ctx.store.write() as conn:
            if outbox.any_pending(conn):
                return
            old_jobs = jobs.prunable(conn, cutoff, PRUNE_JOBS)
            removed = {"jobs": len(old_jobs)}
            if old_jobs:
                their_workers = job_workers.workers_of_jobs(conn, old_jobs)
                removed["ranges"] = ranges.delete_of_jobs(conn, old_jobs)
                job_workers.delete_of_jobs(conn, old_jobs)
                if their_workers:  # a worker that also served a job still kept stays with it
                    removed["workers"] = workers.delete_unreferenced(conn, their_workers)
                jobs.delete(conn, old_jobs)
            # ids grow with time: the oldest rows are the first by primary key, no scan of the whole table
            removed["history"] = history.prune(conn, PRUNE_ROWS, cutoff)
            removed["messages"] = outbox.prune_sent(conn, PRUNE_ROWS, cutoff)
        removed["archives"] = self.prune_archives(cutoff)
        busy = removed["jobs"] == PRUNE_JOBS or PRUNE_ROWS in (
            removed["history"],
            removed["messages"],
            removed["archives"],
        )
        self._next_prune = now if busy else now + PRUNE_EVERY  # a backlog goes on next cycle, else hourly
        if any(removed.values()):
            log.info(
                "forgot what ended more than %.0fs ago: %s",
                self.ctx.config.daemon.keep_history,
                ", ".join(f"{n} {what}" for what, n in removed.items() if n),
            )

    def prune_archives(self, cutoff: float) -> int:
        where = self.ctx.config.paths.archives
        if where is None:
            return 0
        try:
            return self.ctx.files.prune_archives(where, cutoff, PRUNE_ROWS)
        except OSError as exc:
            log.error("old archives in %s not removed: %s", where, exc)
            return 0
