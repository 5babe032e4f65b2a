"""Rank 0's bookkeeping of range results: batched status reports, per-job counts, manifests and final reports."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from jumbo import protocol

log = logging.getLogger(__name__)

STATUSES = ("finished", "failed", "not-done")


class Reporter:
    """Collects results from all ranks; ``maybe_flush`` hands them to the source (file or HTTP) in batches."""

    def __init__(self, ap: Path, jobs: dict[int, dict], source, flush_interval: float):
        self.ap, self.jobs, self.source, self.flush_interval = Path(ap), jobs, source, float(flush_interval)
        self.pending: list[dict] = []
        self.reported: dict[str, str] = {}
        self.finished: dict[int, list[dict]] = {pid: [] for pid in jobs}
        self.counts = {pid: {s: 0 for s in STATUSES} for pid in jobs}
        self.events = {pid: {s: 0 for s in STATUSES} for pid in jobs}
        self.payload_time = 0.0
        self._last_flush = time.time()

    def add_jobs(self, jobs: dict[int, dict]) -> None:
        """A persistent pilot's next jobs: counted from here on (a job given again keeps its counts)."""
        for pid, job in jobs.items():
            self.jobs[pid] = job
            self.finished.setdefault(pid, [])
            self.counts.setdefault(pid, {s: 0 for s in STATUSES})
            self.events.setdefault(pid, {s: 0 for s in STATUSES})

    def add(self, result: dict) -> None:
        rid, status = result["eventRangeID"], result["eventStatus"]
        if self.reported.get(rid) in ("finished", "failed"):
            log.error("range %s reported %s after %s: dropped (exactly once)", rid, status, self.reported[rid])
            return
        self.reported[rid] = status
        pid = result["PandaID"]
        self.counts[pid][status] += 1
        self.events[pid][status] += result["nEvents"]
        if status != "not-done":
            self.payload_time += result["endTime"] - result["startTime"]
        if status == "finished":
            self.finished[pid].append(result)
        self.pending.append(result)

    def totals(self) -> dict:
        return {s: sum(c[s] for c in self.counts.values()) for s in STATUSES}

    def maybe_flush(self, now: float, force: bool = False) -> None:
        if self.pending and (force or now - self._last_flush >= self.flush_interval):
            batch, self.pending = self.pending, []
            self.source.report(batch)
            self._last_flush = now

    def write_manifests(self) -> dict[int, str]:
        """One manifest per job listing its finished range outputs in event order (the merge step)."""
        out = {}
        for pid, results in self.finished.items():
            path = self.ap / "outputs" / f"{pid}.manifest.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            files = sorted(
                (
                    {
                        k: r[k]
                        for k in ("eventRangeID", "startEvent", "lastEvent", "nEvents", "path", "fsize", "adler32")
                    }
                    for r in results
                    if "path" in r
                ),
                key=lambda f: f["startEvent"],
            )
            protocol.write_json_atomic(
                path,
                {
                    "PandaID": pid,
                    "taskID": self.jobs[pid]["taskID"],
                    "files": files,
                    "nEvents": sum(f["nEvents"] for f in files),
                },
            )
            out[pid] = str(path)
        return out

    def finalize(
        self, per_rank: dict[int, dict], started: float, end_reason: str, fatal: str, errors: list[str], size: int
    ) -> None:
        """Write the manifests, worker_attributes.json and, last, jobReport.json, whose wallTime runs from
        ``started`` (MPI up) to the moment it is written: the final reports' own writing counts."""
        manifests = self.write_manifests()
        jobs = {}
        for pid in self.jobs:
            c, e = self.counts[pid], self.events[pid]
            jobs[str(pid)] = {
                "jobStatus": "failed" if fatal else "finished",
                "manifest": manifests[pid],
                "nRangesFinished": c["finished"],
                "nRangesFailed": c["failed"],
                "nRangesNotDone": c["not-done"],
                "nEventsFinished": e["finished"],
                "nEventsFailed": e["failed"],
                "nEventsNotDone": e["not-done"],
            }
        protocol.write_worker_attributes(
            self.ap,
            {
                "workerStatus": "failed" if fatal else "finished",
                "pilotErrorCode": 1 if fatal else 0,
                "pilotErrorDiag": fatal,
                "endReason": end_reason,
                "errors": errors,
                "jobs": jobs,
            },
        )
        ranks = {str(r): m for r, m in sorted(per_rank.items())}
        now = time.time()
        protocol.write_job_report(
            self.ap,
            {
                "wallTime": now - started,
                "startTime": started,
                "endTime": now,
                "ranks": size,
                "endReason": end_reason,
                "jobs": jobs,
                "payloadTime": self.payload_time,
                "cpuTime": sum(m.get("cpuTime", 0.0) for m in per_rank.values()),
                "maxRSS": max((m.get("maxRSS", 0) for m in per_rank.values()), default=0),
                "maxPSS": max((m.get("maxPSS", 0) for m in per_rank.values()), default=0),
                "maxVMEM": max((m.get("maxVMEM", 0) for m in per_rank.values()), default=0),
                "perRank": ranks,
            },
        )
