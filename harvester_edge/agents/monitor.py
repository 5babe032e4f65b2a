"""Monitor: ONE batch status call per queue per cycle for all active workers, then what the pilots wrote.

Per worker it reads the heartbeat and the event status files; each status file becomes range transitions plus one
outbox message in a single transaction, and is renamed to .read only after that commit (a crash in between means
the file is read again, and ranges already moved are skipped, so nothing is reported twice). When a worker ends,
ranges it never reported go back to the central service as not done.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harvester_edge.agents.base import Agent
from harvester_edge.batch import BatchError, BatchState
from harvester_edge.codes import EventError
from harvester_edge.errors import IllegalTransition
from harvester_edge.outbox import enqueue
from harvester_edge.seams import files as protocol  # the pilot-file seam (offline replay records it)
from harvester_edge.states import RangeState, WorkerState, check_transition
from harvester_edge.store import claim, jobs, ranges, transition, update, workers
from harvester_edge.store.outbox import enqueue_many
from harvester_edge.store.rows import transition_each
from jumbo.protocol import HEARTBEAT

log = logging.getLogger(__name__)

W, R = WorkerState, RangeState
BATCH_TO_WORKER = {
    BatchState.QUEUED: W.QUEUED,
    BatchState.RUNNING: W.RUNNING,
    BatchState.SUSPENDED: W.RUNNING,
    BatchState.FINISHED: W.FINISHED,
    BatchState.TIMEOUT: W.FINISHED,  # pilots drain before the walltime: a TIMEOUT is expected, not a failure
    BatchState.FAILED: W.FAILED,
    BatchState.CANCELLED: W.CANCELLED,
    BatchState.MISSING: W.MISSING,
}
# how the harvester hands back a range a pilot never processed: a failure of a class the central service's
# classification table confirms as "system", so it does not use up an attempt
NOT_DONE_CODE = EventError.NOT_PROCESSED
NOT_DONE_DIAG = EventError.MEANING[EventError.NOT_PROCESSED]
GROUP_FILES = 500  # pilot status files applied in one transaction (bounds the write lock's hold)


def range_report(range_id: str, status: str, entry: dict | None = None) -> dict:
    """A version-0 update_event_ranges entry for a pilot's status entry."""
    entry = entry or {}
    if status == "not-done":
        return {
            "eventRangeID": range_id,
            "eventStatus": "failed",
            "errorCode": NOT_DONE_CODE,
            "errorDiag": NOT_DONE_DIAG,
        }
    report: dict[str, Any] = {"eventRangeID": range_id, "eventStatus": status}
    if entry.get("cpuTime") is not None:
        report["cpuConsumptionTime"] = entry["cpuTime"]
    if status == "finished" and entry.get("maxPSS") is not None:
        # a pilot that measures memory per range: the scouts' measures (central/scouts.py; not PanDA fields)
        start, end = entry.get("startTime"), entry.get("endTime")
        if start is not None and end is not None and end >= start:
            report["wallTime"] = round(float(end) - float(start), 3)
        report["maxPSS"] = int(entry["maxPSS"])
    if status == "failed":
        report["errorCode"] = int(entry.get("errorCode") or EventError.PAYLOAD_FAILED)
        report["errorDiag"] = str(entry.get("errorDiag") or "payload failed")[:500]
    return report


def measured_seconds_per_event(entries) -> dict[int, float]:
    """Wall seconds per event per job, from the timing of finished ranges in one status file."""
    totals: dict[int, list[float]] = {}
    for pid, entry in entries:
        start, end, n = entry.get("startTime"), entry.get("endTime"), entry.get("nEvents")
        if entry.get("eventStatus") == "finished" and start and end and n and end >= start:
            acc = totals.setdefault(pid, [0.0, 0.0])
            acc[0] += float(end) - float(start)
            acc[1] += int(n)
    return {pid: t / n for pid, (t, n) in totals.items() if n}


class Monitor(Agent):
    name = "monitor"

    def run_cycle(self, now: float) -> None:
        with self.ctx.store.write() as conn:
            rows = claim(
                conn,
                W,
                self.owner,
                states=[W.QUEUED, W.RUNNING],
                now=now,
                lease_time=self.ctx.config.daemon.lease_time,
                limit=100_000,
            )
        by_queue: dict[str, list] = {}
        for row in rows:
            by_queue.setdefault(row["queue"], []).append(row)
        for queue_name, queue_rows in by_queue.items():
            self.check_batch(queue_name, queue_rows, now)
        self.collect_all([(row["id"], Path(row["access_point"])) for row in rows], now)
        self.release_orphans(now)

    def read_heartbeat(self, worker_id: int, ap: Path) -> float | None:
        """The time of the pilot's last heartbeat; a bad heartbeat file is moved aside (the pilot writes anew)."""
        try:
            beat = self.ctx.files.read_heartbeat(ap)
        except protocol.ProtocolError as exc:
            self.ctx.files.set_aside(worker_id, ap / HEARTBEAT, exc)
            return None
        except OSError as exc:
            log.warning("worker %d: heartbeat not read this cycle: %s", worker_id, exc, extra={"worker_id": worker_id})
            return None
        return float(beat["time"]) if beat and beat.get("time") else None

    def check_batch(self, queue_name: str, rows: list, now: float) -> None:
        ids = [r["batch_id"] for r in rows if r["batch_id"]]
        try:
            statuses = self.ctx.plugins[queue_name].status(ids) if ids else {}
        except BatchError as exc:
            log.warning("status of %d workers on %s unknown this cycle: %s", len(ids), queue_name, exc)
            statuses = {}
        beats = {row["id"]: self.read_heartbeat(row["id"], Path(row["access_point"])) for row in rows}
        updates: dict[tuple[str, ...], list[dict]] = {}  # rows by the columns that change: one statement each
        moves: dict[tuple[WorkerState, WorkerState, str], list[int]] = {}
        for row in rows:
            changes: dict = {}
            heartbeat = beats.get(row["id"])
            if heartbeat and heartbeat != row["heartbeat_at"]:
                changes["heartbeat_at"] = heartbeat
            status = statuses.get(row["batch_id"])
            dst = BATCH_TO_WORKER.get(status.state) if status else None
            if status:
                changes.update(batch_state=status.raw_state, batch_reason=status.reason, exit_code=status.exit_code)
            src = W(row["state"])
            if status is not None and dst is not None and dst != src:  # dst comes from a status
                try:
                    check_transition(src, dst)
                except IllegalTransition:
                    dst = None  # e.g. RUNNING -> QUEUED (a requeue): keep RUNNING
                else:
                    if dst == W.RUNNING or (dst not in (W.QUEUED,) and not row["started_at"]):
                        changes["started_at"] = status.start_time or now
                    if dst not in (W.QUEUED, W.RUNNING):
                        changes["ended_at"] = status.end_time or now
            if changes:
                updates.setdefault(tuple(changes), []).append({"id": row["id"], **changes})
            if status is not None and dst is not None and dst != src:
                reason = f"batch state {status.raw_state} {status.reason}".strip()
                moves.setdefault((src, dst, reason), []).append(row["id"])
                log.info(
                    "worker %d (%s): %s -> %s (%s%s)",
                    row["id"],
                    row["batch_id"],
                    src.value,
                    dst.value,
                    status.raw_state,
                    f", {status.reason}" if status.reason else "",
                    extra={"worker_id": row["id"], "batch_id": row["batch_id"]},
                )
        with self.ctx.store.write() as conn:  # the whole status call's outcome: one transaction, as before
            for group in updates.values():
                update(conn, "workers", "id", group, now=now, owner=self.owner)
            for (src, dst, reason), ids in moves.items():
                transition(conn, ids, src, dst, now=now, owner=self.owner, reason=reason)

    def collect_events(self, worker_id: int, ap: Path, now: float) -> None:
        """Turn the pilot's event status files into range transitions and outbox messages.

        A file that cannot be read or validated is moved aside; the other files and workers go on."""
        self.collect_all([(worker_id, ap)], now, isolate=False)

    def collect_all(self, workers_aps: list[tuple[int, Path]], now: float, isolate: bool = True) -> None:
        """collect_events for many workers: their status files are applied GROUP_FILES at a time in one transaction
        (each file still its own consistent unit: its transitions with its outbox message), and renamed to .read
        after that commit. A crash before the commit leaves every file of the group unread and nothing applied; after
        it, files read again are skipped range by range. One worker's bad file or failure never stops the others."""
        group: list[tuple[int, Path, protocol.Batch]] = []
        for worker_id, ap in workers_aps:
            try:
                for _, batch in self.ctx.files.each_pending(
                    worker_id, ap, protocol.STATUS, self.ctx.files.load_event_status
                ):
                    group.append((worker_id, ap, batch))
            except Exception:
                if not isolate:
                    raise
                log.exception(
                    "worker %d: its event reports were not collected this cycle",
                    worker_id,
                    extra={"worker_id": worker_id},
                )
            if len(group) >= GROUP_FILES:
                self._apply_group(group, now, isolate)
                group = []
        if group:
            self._apply_group(group, now, isolate)

    def _apply_group(self, group: list[tuple[int, Path, protocol.Batch]], now: float, isolate: bool) -> None:
        try:
            with self.ctx.store.write() as conn:
                self.apply_files(conn, [(worker_id, batch) for worker_id, _, batch in group], now)
        except Exception:
            if not isolate and len(group) == 1:
                raise
            log.warning("a group of %d status files failed to apply together: applying them one by one", len(group))
            for worker_id, ap, batch in group:  # one file at a time: the bad one alone stays unread
                try:
                    self.apply_batch(worker_id, batch, now)
                except Exception:
                    if not isolate:
                        raise
                    log.exception(
                        "worker %d: its event reports were not collected this cycle",
                        worker_id,
                        extra={"worker_id": worker_id},
                    )
                    continue
                self.ctx.files.mark_consumed(ap, batch)
            return
        for _, ap, batch in group:
            self.ctx.files.mark_consumed(ap, batch)

    def apply_batch(self, worker_id: int, batch: protocol.Batch, now: float) -> None:
        """One status file in its own transaction (see apply_files)."""
        with self.ctx.store.write() as conn:
            self.apply_files(conn, [(worker_id, batch)], now)

    def apply_files(self, conn, files: list[tuple[int, protocol.Batch]], now: float) -> None:
        """Status files into range transitions and one outbox message per file, inside the caller's transaction,
        with a few statements for all of them. A range is applied once: when its worker holds it DISPATCHED and no
        earlier file of the group applied it (a file read again after a crash finds its ranges moved already)."""
        all_ids = [e["eventRangeID"] for _, batch in files for lst in batch.events.values() for e in lst]
        if not all_ids:
            return
        known = ranges.by_ids(conn, all_ids)
        applied: set[str] = set()
        results: list[tuple[str, dict[str, Any]]] = []
        moved: dict[RangeState, list[tuple[str, str]]] = {R.FINISHED: [], R.FAILED: [], R.RELEASED: []}
        done_per_job: dict[int, int] = {}
        blends: list[tuple[int, float]] = []
        messages: list[list[dict[str, Any]]] = []
        for worker_id, batch in files:
            entries = {e["eventRangeID"]: (pid, e) for pid, lst in batch.events.items() for e in lst}
            if not entries:
                continue
            foreign = sorted(
                rid
                for rid, (pid, _) in entries.items()
                if rid not in known or known[rid][4] != worker_id or known[rid][1] != pid
            )
            if foreign:  # a pilot reports only what was dispatched to it: anything else is never accounted
                log.warning(
                    "worker %d: %s reports %d range(s) not dispatched to this worker (or under another "
                    "job), ignored: %s",
                    worker_id,
                    batch.path.name,
                    len(foreign),
                    ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""),
                    extra={"worker_id": worker_id},
                )
                entries = {rid: (pid, e) for rid, (pid, e) in entries.items() if rid not in foreign}
            reports: list[dict[str, Any]] = []
            reason = f"pilot report seq {batch.seq}"
            for range_id, (_pid, entry) in entries.items():
                row = known[range_id]
                if range_id in applied or row[5] != R.DISPATCHED.value:
                    continue  # already applied: a file read again after a crash
                applied.add(range_id)
                status = entry["eventStatus"]
                dst = {"finished": R.FINISHED, "failed": R.FAILED, "not-done": R.RELEASED}[status]
                moved[dst].append((range_id, reason))
                reports.append(range_report(range_id, status, entry))
                results.append((range_id, entry))
                if dst != R.RELEASED:
                    done_per_job[row[1]] = done_per_job.get(row[1], 0) + row[3] - row[2] + 1
            blends.extend(measured_seconds_per_event(entries.values()).items())
            if reports:
                messages.append(reports)
                log.debug(
                    "worker %d: %d range reports (seq %d) queued for the central service",
                    worker_id,
                    len(reports),
                    batch.seq,
                    extra={"worker_id": worker_id},
                )
        ranges.set_results(conn, results)
        for dst, pairs in moved.items():
            transition_each(conn, pairs, R.DISPATCHED, dst, now=now)
        for pid, n in done_per_job.items():
            jobs.add_events_done(conn, pid, n, now)
        for pid, spe in blends:  # file by file, in order: the blend weighs each file's measure as before
            jobs.blend_seconds_per_event(conn, pid, spe)
        enqueue_many(conn, "update_event_ranges", messages, now)

    def release_orphans(self, now: float) -> None:
        """Ranges still dispatched to workers that ended go back as not done (after their last reports were read)."""
        with self.ctx.store.write() as conn:
            ended = ranges.workers_ended_holding(conn)
        for worker_id in ended:
            ap = Path(workers.access_point(self.ctx.store.connection(), worker_id))
            self.collect_events(worker_id, ap, now)  # the final reports, if the pilot wrote them after our last look
            with self.ctx.store.write() as conn:
                ids = ranges.dispatched_to(conn, worker_id)
                if not ids:
                    continue
                transition(conn, ids, R.DISPATCHED, R.RELEASED, now=now, reason=f"worker {worker_id} ended")
                enqueue(conn, "update_event_ranges", [range_report(i, "not-done") for i in ids], now)
            log.info(
                "worker %d ended with %d ranges unreported: handed back as not done",
                worker_id,
                len(ids),
                extra={"worker_id": worker_id},
            )
