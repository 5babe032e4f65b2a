"""A worker's identity and access point: its unique batch job name, its directory, its job spec and WorkerSpec."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harvester_edge.batch import WorkerSpec
from harvester_edge.config import QueueConfig, SiteConfig
from harvester_edge.jobpayload import jumbo_payload
from harvester_edge.seams.files import PilotFiles

HEARTBEAT_INTERVAL = 10.0  # seconds between the pilot's heartbeat files
PREFETCH = 1  # ranges queued on each rank beyond the one it runs (the pilot's "prefetch")


def range_limit(ranks: int) -> int:
    """The most ranges a worker of `ranks` ranks can use per request: ranks x (prefetch + 1). Its job spec asks
    exactly this; the feeder clamps any request to it (a pilot's request is untrusted input)."""
    return max(1, int(ranks)) * (PREFETCH + 1)


def job_name(site: str, install: str, worker_id: int) -> str:
    """Unique per site and database: find_by_name after a crash can never match another install's job."""
    return f"he-{site}-{install}-w{worker_id:06d}"


def access_point(config: SiteConfig, worker_id: int) -> Path:
    return config.access_points / f"w{worker_id:06d}"


def pilot_payload(job_spec: dict[str, Any]) -> dict[str, Any]:
    """The payload spec as jumbo reads it (harvester_edge.jobpayload: the task payload, or transformation+jobPars)."""
    return jumbo_payload(job_spec)


def pilot_job_entry(job: Mapping[str, Any]) -> dict[str, Any]:
    """One job as the pilot reads it (HPCJobs.json's "jobs", a persistent pilot's next jobs)."""
    return {
        "PandaID": int(job["PandaID"]),
        "taskID": int(job["taskID"]),
        "jobsetID": int(job.get("jobsetID") or 0),
        "payload": pilot_payload(dict(job)),
    }


def write_job_spec(
    files: PilotFiles,
    ap: Path,
    jobs: list[dict[str, Any]],
    walltime: int,
    drain_warning: int,
    ranks: int,
    pilot: Mapping[str, Any] | None = None,
) -> None:
    """HPCJobs.json through the file seam, which makes the access point: what the pilot runs (jumbo.protocol
    validates it before it reaches a node); pilot: the queue's pilot settings (QueueConfig.pilot_settings: memory/CPU
    sampling, looping timeout, free disk minimum), else the pilot's defaults."""
    spec: dict[str, Any] = {
        "jobs": [pilot_job_entry(j) for j in jobs],
        "pilot": {
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "mode": "file",
            "prefetch": PREFETCH,
            "n_ranges": range_limit(ranks),
            "safety_margin": float(min(max(drain_warning, 10), walltime // 4)),
        },
    }
    spec["pilot"].update(pilot or {})
    files.write_job_spec(ap, spec)


def worker_spec(row: sqlite3.Row | dict, queue: QueueConfig) -> WorkerSpec:
    ap = Path(row["access_point"])
    return WorkerSpec(
        worker_id=int(row["id"]),
        job_name=row["job_name"],
        access_point=ap,
        nodes=int(row["nodes"]),
        # a real job's worker may run fewer ranks than the queue's (jobpayload.worker_shape): cores follow the ranks
        ranks_per_node=int(row["ranks_per_node"]),
        cores_per_rank=max(1, queue.cores_per_node // max(1, int(row["ranks_per_node"]))),
        walltime=int(row["walltime"]),
        memory_mb=queue.memory_mb,
        # the pilot computes its end time from its own start: queue wait does not eat into it
        pilot_argv=[sys.executable, "-m", "jumbo", "--ap", str(ap), "--end-time", f"+{int(row['walltime'])}"],
        env={"HARVESTER_EDGE_WORKER_ID": str(row["id"])},
    )


def job_spec_of(row: sqlite3.Row | dict) -> dict[str, Any]:
    return json.loads(row["spec"])
