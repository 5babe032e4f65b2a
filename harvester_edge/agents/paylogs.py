"""Payload logs: ship the lines the pilots' ranks wrote (logs/payload.<rank>.jsonl, jumbo.paylog) to the central
service in batches, each file read from where the last batch ended.

Each file is read through the pilot-file seam (harvester_edge.pilot_files.read_payload_log: a regular, singly
linked file under its cap, complete lines only, lines that are not payload log records skipped and counted); a
file that is unsafe or was replaced is refused with its reason, noted in the book and not read again, and nothing
else stops. A batch's end offset is written to the book only after the service took it: a daemon killed in
between sends that batch again, and the service stores each line once (its source and offset). The worker id on
each line is the harvester's, not what the pilot wrote. A worker whose files were all shipped after it ended is done.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harvester_edge.agents.base import Agent
from harvester_edge.central.client import CentralRejected, CentralUnavailable
from harvester_edge.seams.files import ProtocolError, Unreadable
from harvester_edge.states import WorkerState
from harvester_edge.store import paylogs as offsets

log = logging.getLogger(__name__)
WORKERS = 200  # workers looked at per cycle
BATCH = 512 * 1024  # bytes of a file per upload
BATCHES = 8  # uploads per file per cycle: a chatty pilot does not hold the others' lines back for long
FORGET_EVERY = 3600.0


class PayloadLogs(Agent):
    name = "paylogs"
    _next_forget = 0.0

    def run_cycle(self, now: float) -> None:
        store = self.ctx.store
        for row in offsets.to_ship(store.connection(), WORKERS):
            if self.ctx.stop.is_set():
                return
            try:
                self.ship_worker(int(row["id"]), Path(row["access_point"]), row["state"] != WorkerState.RUNNING, now)
            except CentralUnavailable as exc:
                log.warning("payload logs: the central service did not take a batch (%s); sent again next cycle", exc)
                return
        if now >= self._next_forget:
            with store.write() as conn:
                offsets.forget_gone(conn)
            self._next_forget = now + FORGET_EVERY

    def ship_worker(self, worker_id: int, ap: Path, ended: bool, now: float) -> None:
        try:
            names = self.ctx.files.payload_logs(ap)
        except FileNotFoundError:
            names = []  # no access point (any more): nothing to ship
        except Unreadable as exc:
            self._refuse(worker_id, "logs", exc.reason, now)
            names = []
        known = offsets.offsets(self.ctx.store.connection(), worker_id)
        complete = True
        for name in names:
            offset, error = known.get(name, (0, None))
            if error is None and not self.ship_file(worker_id, ap, name, offset, now):
                complete = False
        if ended and complete:
            with self.ctx.store.write() as conn:
                offsets.mark_done(conn, worker_id, now)

    def ship_file(self, worker_id: int, ap: Path, name: str, offset: int, now: float) -> bool:
        """Send batches of one file; True when it was read to its end (or refused: nothing more to do)."""
        for _ in range(BATCHES):
            try:
                batch: dict[str, Any] = self.ctx.files.read_payload_log(ap, name, offset, BATCH)
            except FileNotFoundError:
                return True
            except (Unreadable, ProtocolError) as exc:
                self._refuse(worker_id, name, getattr(exc, "reason", str(exc)), now, offset)
                return True
            if batch["skipped"]:
                log.warning(
                    "worker %d: %s: %d line(s) that are not payload log records skipped (bytes %d-%d)",
                    worker_id,
                    name,
                    batch["skipped"],
                    offset,
                    batch["offset"],
                    extra={"worker_id": worker_id},
                )
            if batch["records"]:
                records = [{**r, "worker": worker_id} for r in batch["records"]]
                try:
                    answer = self.central.upload_payload_logs(
                        f"w{worker_id}/{name}", records, harvester_id=self.ctx.config.site
                    )
                except CentralRejected as exc:
                    self._refuse(worker_id, name, f"the central service refused a batch: {exc}", now, offset)
                    return True
                if answer.get("refused"):
                    log.warning(
                        "worker %d: %s: lines of jobs %s refused by the central service (not this site's jobs)",
                        worker_id,
                        name,
                        answer["refused"][:10],
                        extra={"worker_id": worker_id},
                    )
            progressed = batch["offset"] != offset
            if progressed:
                with self.ctx.store.write() as conn:
                    offsets.set_offset(conn, worker_id, name, int(batch["offset"]), None, now)
                offset = int(batch["offset"])
            if offset >= int(batch["size"]):
                return True
            if not progressed:  # a line still being written
                return False
        return False

    def _refuse(self, worker_id: int, name: str, reason: str, now: float, offset: int = 0) -> None:
        log.warning(
            "worker %d: payload log %s is not shipped: %s",
            worker_id,
            name,
            reason,
            extra={"worker_id": worker_id},
        )
        with self.ctx.store.write() as conn:
            offsets.set_offset(conn, worker_id, name, offset, reason[:500], now)
