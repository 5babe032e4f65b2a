"""Sweeper: cancel what must die (killed jobs, kill requests, workers queued too long or with a lost heartbeat)
and remove finished access points after a delay."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from jumbo import protocol

from harvester_edge.agents.base import Agent
from harvester_edge.batch import BatchError
from harvester_edge.states import WorkerState
from harvester_edge.store import transition

log = logging.getLogger(__name__)
W = WorkerState
TERMINAL = (W.FINISHED.value, W.FAILED.value, W.CANCELLED.value, W.MISSING.value)


class Sweeper(Agent):
    name = "sweeper"

    def run_cycle(self, now: float) -> None:
        self.flag_stuck(now)
        self.cancel_requested(now)
        self.clean(now)

    def flag_stuck(self, now: float) -> None:
        daemon = self.ctx.config.daemon
        with self.ctx.store.write() as conn:
            queued = conn.execute(
                "UPDATE workers SET kill_requested = 1, error = ?, updated_at = ? WHERE state = ? AND "
                "kill_requested = 0 AND submitted_at < ? RETURNING id",
                (f"queued longer than {daemon.queued_timeout:.0f}s", now, W.QUEUED.value,
                 now - daemon.queued_timeout)).fetchall()
            silent = conn.execute(
                "UPDATE workers SET kill_requested = 1, error = ?, updated_at = ? WHERE state = ? AND "
                "kill_requested = 0 AND coalesce(heartbeat_at, started_at) < ? RETURNING id, access_point",
                (f"pilot heartbeat lost for {daemon.heartbeat_timeout:.0f}s", now, W.RUNNING.value,
                 now - daemon.heartbeat_timeout)).fetchall()
        for row in queued:
            log.info("worker %d queued too long: cancelling it", row[0], extra={"worker_id": row[0]})
        for row in silent:
            log.warning("worker %d: pilot heartbeat lost for %.0fs: cancelling it", row[0], daemon.heartbeat_timeout,
                        extra={"worker_id": row[0]})

    def cancel_requested(self, now: float) -> None:
        store = self.ctx.store
        with store.write() as conn:  # not submitted yet: cancel in the book only
            unsent = [r[0] for r in conn.execute("SELECT id FROM workers WHERE kill_requested = 1 AND state = ?",
                                                 (W.NEW.value,))]
            transition(conn, unsent, W.NEW, W.CANCELLED, now=now, reason="kill requested before submission")
        rows = store.query("SELECT id, queue, batch_id, access_point FROM workers WHERE kill_requested = 1 AND "
                           "state IN (?, ?) AND batch_id IS NOT NULL", (W.QUEUED.value, W.RUNNING.value))
        by_queue: dict[str, list] = {}
        for row in rows:
            by_queue.setdefault(row["queue"], []).append(row)
            try:  # the pilot drains first if it can: in-flight ranges finish and are reported
                protocol.request_drain(Path(row["access_point"]), "kill requested by the harvester")
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
                    log.warning("worker %d (%s): cancel failed: %s", row["id"], row["batch_id"],
                                errors[row["batch_id"]], extra={"worker_id": row["id"]})
            # the monitor sees them CANCELLED on its next status call and hands their ranges back

    def clean(self, now: float) -> None:
        delay = self.ctx.config.daemon.cleanup_delay
        rows = self.ctx.store.query(
            f"SELECT id, access_point FROM workers WHERE state IN ({','.join('?' * len(TERMINAL))}) "
            "AND cleaned_at IS NULL AND coalesce(ended_at, updated_at) < ? AND NOT EXISTS (SELECT 1 FROM "
            "event_ranges e WHERE e.worker_id = workers.id AND e.state = 'dispatched') LIMIT 200",
            (*TERMINAL, now - delay))
        for row in rows:
            shutil.rmtree(row["access_point"], ignore_errors=True)
        if rows:
            with self.ctx.store.write() as conn:
                conn.executemany("UPDATE workers SET cleaned_at = ? WHERE id = ?", [(now, r["id"]) for r in rows])
            log.info("removed %d finished access points (older than %.0fs)", len(rows), delay)
