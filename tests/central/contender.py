"""One central-service process of the contention test (test_contention.py): reads one plan per line on stdin,
runs it against central.db (a PostgreSQL URL, its own CentralService: its own pool and writer), answers one
JSON line: the range ids it was handed, the range reports the service applied, the errors it met.

Plan lines: {"db": url, "dir": files_dir, "task": id, "jobs": [panda ids], "start": epoch, "ops": [...]}; ops:
["acquire_jobs", n], ["acquire_ranges", job index, n], ["report", "finished"|"failed", pick, size],
["job", job index, state]. `pick` chooses among this process's dispatched ids (newest first): old ones are stale.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from harvester_edge.central.errors import CentralError
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.errors import StoreError


def run(plan: dict) -> dict:
    svc = CentralService.open(plan["db"], CentralSettings(db=plan["db"], files_dir=Path(plan["dir"])))
    dispatched: list[str] = []
    applied: list[list[str]] = []
    errors: list[str] = []
    jobs = plan["jobs"]
    try:
        time.sleep(max(0.0, plan["start"] - time.time()))
        for op in plan["ops"]:
            try:
                if op[0] == "acquire_jobs":
                    svc.acquire_jobs("SITE", op[1])
                elif op[0] == "acquire_ranges":
                    got = svc.acquire_event_ranges(jobs[op[1] % len(jobs)], plan["task"], op[2])
                    dispatched += [r["eventRangeID"] for r in got]
                elif op[0] == "report" and dispatched:
                    newest_first = dispatched[::-1]
                    ids = [newest_first[(op[2] + i) % len(newest_first)] for i in range(op[3])]
                    reps = [{"eventRangeID": i, "eventStatus": op[1], "errorCode": 5} for i in ids]
                    out = svc.update_event_ranges(reps)
                    applied += [[i, op[1]] for i, r in zip(ids, out["Results"]) if r == "applied"]
                elif op[0] == "job":
                    svc.update_job(jobs[op[1] % len(jobs)], op[2], {"pilotErrorCode": 1137})
            except (CentralError, StoreError) as exc:
                errors.append(f"{op[0]}: {type(exc).__name__}: {exc}"[:300])
    finally:
        svc.close()
    return {"dispatched": dispatched, "applied": applied, "errors": errors}


def main() -> None:
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
