"""Sweeper: cancel what must die (killed jobs, kill requests, workers queued too long or with a lost heartbeat),
remove finished access points after a delay, and forget what ended long ago so the DB stays small."""

from __future__ import annotations

import logging
from pathlib import Path

from harvester_edge.agents.base import Agent
from harvester_edge.batch import BatchError
from harvester_edge.states import JobState, OutboxState, WorkerState
from harvester_edge.store import transition

log = logging.getLogger(__name__)
W = WorkerState
TERMINAL = (W.FINISHED.value, W.FAILED.value, W.CANCELLED.value, W.MISSING.value)
JOB_ENDED = (JobState.FINISHED.value, JobState.FAILED.value, JobState.CANCELLED.value)
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
            queued = conn.execute(
                "UPDATE workers SET kill_requested = 1, error = ?, updated_at = ? WHERE state = ? AND "
                "kill_requested = 0 AND submitted_at < ? RETURNING id",
                (f"queued longer than {daemon.queued_timeout:.0f}s", now, W.QUEUED.value, now - daemon.queued_timeout),
            ).fetchall()
            silent = conn.execute(
                "UPDATE workers SET kill_requested = 1, error = ?, updated_at = ? WHERE state = ? AND "
                "kill_requested = 0 AND coalesce(heartbeat_at, started_at) < ? RETURNING id, access_point",
                (
                    f"pilot heartbeat lost for {daemon.heartbeat_timeout:.0f}s",
                    now,
                    W.RUNNING.value,
                    now - daemon.heartbeat_timeout,
                ),
            ).fetchall()
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
            unsent = [
                r[0]
                for r in conn.execute("SELECT id FROM workers WHERE kill_requested = 1 AND state = ?", (W.NEW.value,))
            ]
            transition(conn, unsent, W.NEW, W.CANCELLED, now=now, reason="kill requested before submission")
        rows = store.query(
            "SELECT id, queue, batch_id, access_point FROM workers WHERE kill_requested = 1 AND "
            "state IN (?, ?) AND batch_id IS NOT NULL",
            (W.QUEUED.value, W.RUNNING.value),
        )
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
        delay = self.ctx.config.daemon.cleanup_delay
        rows = self.ctx.store.query(
            f"SELECT id, access_point FROM workers WHERE state IN ({','.join('?' * len(TERMINAL))}) "
            "AND cleaned_at IS NULL AND coalesce(ended_at, updated_at) < ? AND NOT EXISTS (SELECT 1 FROM "
            "event_ranges e WHERE e.worker_id = workers.id AND e.state = 'dispatched') LIMIT 200",
            (*TERMINAL, now - delay),
        )
        for row in rows:
            self.ctx.files.remove_access_point(row["access_point"])
        if rows:
            with self.ctx.store.write() as conn:
                conn.executemany("UPDATE workers SET cleaned_at = ? WHERE id = ?", [(now, r["id"]) for r in rows])
            log.info("removed %d finished access points (older than %.0fs)", len(rows), delay)

    def prune(self, now: float) -> None:
        """Delete jobs that ended more than daemon.keep_history ago with their ranges and workers (once every worker
        ended and its access point is gone), and older state history and sent messages. Nothing is pruned while a
        message waits for the central service: the rows it reports on stay until it is accepted."""
        if now < self._next_prune:
            return
        cutoff = now - self.ctx.config.daemon.keep_history
        marks = ",".join("?" * len(TERMINAL))
        with self.ctx.store.write() as conn:
            if conn.execute("SELECT 1 FROM outbox WHERE state = ? LIMIT 1", (OutboxState.PENDING.value,)).fetchone():
                return
            jobs = [
                r[0]
                for r in conn.execute(
                    f"SELECT panda_id FROM jobs WHERE state IN (?, ?, ?) AND updated_at < ? AND NOT EXISTS ("
                    f"SELECT 1 FROM job_workers jw JOIN workers w ON w.id = jw.worker_id "
                    f"WHERE jw.panda_id = jobs.panda_id "
                    f"AND (w.state NOT IN ({marks}) OR w.cleaned_at IS NULL)) LIMIT ?",
                    (*JOB_ENDED, cutoff, *TERMINAL, PRUNE_JOBS),
                )
            ]
            removed = {"jobs": len(jobs)}
            if jobs:
                ids = ",".join("?" * len(jobs))
                workers = [
                    r[0]
                    for r in conn.execute(f"SELECT DISTINCT worker_id FROM job_workers WHERE panda_id IN ({ids})", jobs)
                ]
                removed["ranges"] = conn.execute(f"DELETE FROM event_ranges WHERE panda_id IN ({ids})", jobs).rowcount
                conn.execute(f"DELETE FROM job_workers WHERE panda_id IN ({ids})", jobs)
                if workers:  # a worker that also served a job still kept stays with it
                    wids = ",".join("?" * len(workers))
                    removed["workers"] = conn.execute(
                        f"DELETE FROM workers WHERE id IN ({wids}) AND NOT EXISTS (SELECT 1 FROM job_workers jw "
                        f"WHERE jw.worker_id = workers.id) AND NOT EXISTS (SELECT 1 FROM event_ranges e "
                        f"WHERE e.worker_id = workers.id)",
                        workers,
                    ).rowcount
                conn.execute(f"DELETE FROM jobs WHERE panda_id IN ({ids})", jobs)
            # ids grow with time: the oldest rows are the first by primary key, no scan of the whole table
            removed["history"] = conn.execute(
                "DELETE FROM state_history WHERE id IN (SELECT id FROM state_history ORDER BY id LIMIT ?) AND at < ?",
                (PRUNE_ROWS, cutoff),
            ).rowcount
            removed["messages"] = conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?) AND state = ? "
                "AND updated_at < ?",
                (PRUNE_ROWS, OutboxState.SENT.value, cutoff),
            ).rowcount
        busy = removed["jobs"] == PRUNE_JOBS or PRUNE_ROWS in (removed["history"], removed["messages"])
        self._next_prune = now if busy else now + PRUNE_EVERY  # a backlog goes on next cycle, else hourly
        if any(removed.values()):
            log.info(
                "forgot what ended more than %.0fs ago: %s",
                self.ctx.config.daemon.keep_history,
                ", ".join(f"{n} {what}" for what, n in removed.items() if n),
            )
