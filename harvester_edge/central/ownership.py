"""Who may change a job and its event ranges: the identity the job was dispatched to, and nobody else but admins.

Identity of a caller (the shared contract of issue 11, parts 2 and 3):
- token mode: a harvester-scoped token speaks for harvester `sub` (a token with both the harvester and the pilot
  scope, like the daemon's own, counts as the harvester); a pilot credential minted for worker W of harvester H
  (claims "harvester": H, "worker": W) speaks for worker W of H; a standalone pilot token (no "harvester" claim,
  `central issue-token NAME --scope pilot`) speaks for `sub`. The admin scope may change any job; auth.py still
  asks pilot/event calls for a pilot or harvester scope, so an operator uses a token of scopes "admin harvester".
- trusted mode (claims None): every local user of the login node is trusted. When a request names a harvester_id,
  it is held to the jobs dispatched to that harvester (a cheap guard against a mistyped config, not security).

Dispatch (acquire_jobs, v1 pilot/acquire_jobs and legacy getJob): in token mode a job's harvester_id is the
caller's identity, never a free request parameter: a harvester_id parameter that differs is refused with 403
(admins may name any). A pilot credential also fixes worker_id = claims["worker"] (a different worker_id is
403); a harvester names which of its workers a job is for, or none. The same rule holds for every call that
names a harvester_id (all calls below, and update_workers, heartbeat, update_worker_pilot_status): a harvester
cannot write another harvester's worker rows, which bound that harvester's pilots (below).

Calls that change a job or its ranges, each checked inside the write transaction (a refusal writes nothing):
- job update: v1 pilot/update_job and legacy updateJob -> HTTP 403.
- range acquire for job X: v1 event/acquire_event_ranges and legacy getEventRanges -> HTTP 403.
- bulk job update: v1 pilot/update_jobs_bulk and legacy updateJobsInBulk -> per entry
  {"StatusCode": 70, "ErrorDiag": "..."} (AuthError's PanDA code), the caller's own entries are applied.
- range reports (finished/failed/fatal/..., versions 0 and 1): v1 event/update_event_ranges and legacy
  updateEventRanges -> per report "Returns" false and "Results" "refused"; the caller's own are applied.
  A report is judged by the PandaID inside its eventRangeID: a report applies only while that job holds the
  range (events.py), so owning that job is owning the range.
- job kill/retry/fail exist only as task operations (task module: admin scope) and the service's own watchdog.
Why per entry for bulk calls: PanDA answers these calls per entry and its clients (Harvester's propagator, the
pilot) read the per-entry answer; here the daemon relays reports from pilot files in batches, and its outbox
treats an HTTP 403 as an auth failure (kept and retried, issue 11 part 2). One foreign entry (a hostile pilot's
file naming someone else's range) would then hold the whole batch, with its good reports, forever, or (parked)
lose them. Per entry, only the foreign entry is dropped. Single-job calls have no such batch: they are a 403.

Pilot credentials and jobs acquired before the worker existed: the harvester acquires a jumbo job first and then
runs it with one or more workers, at the same time or one after another, so jobs.worker_id (set only when a job
is dispatched for a named worker) is often NULL and cannot name every worker of a job. The harvester tells the
service which jobs a worker runs the way Harvester does: update_workers entries carry "pandaid_list" (stored in
workers.attrs). A pilot of worker W of harvester H may change job J of H when
    J.worker_id == W, or W's reported pandaid_list contains J, or
    J.worker_id is NULL and the harvester has reported no pandaid_list for W (not reported yet).
So a pilot never reaches another harvester's jobs, and once its harvester reports its jobs it is held to them.
No schema change: the relation is read from workers.attrs (one row by primary key, once per request).
harvester-edge's own daemon relays its pilots' ranges through access-point files with its harvester token and
does not send pandaid_list (yet): a pilot credential of its workers is then held to the site's jobs.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import AuthError, InvalidInput
from .store import harvesters
from .store import jobs as job_rows

_PANDA_ID = re.compile(r"[0-9]{1,18}-([0-9]{1,18})-[0-9]{1,18}-[0-9]{1,18}-[0-9]{1,18}")


@dataclass(frozen=True)
class Caller:
    """Who sends a request: token claims (None in trusted mode) and the harvester_id the request names, if any."""

    claims: Mapping[str, Any] | None = None
    harvester_id: str | None = None

    @property
    def unchecked(self) -> bool:
        """Trusted mode naming no harvester, or an admin: every job may be changed, no lookups needed."""
        if self.claims is None:
            return self.harvester_id is None
        return "admin" in scopes(self.claims)


TRUSTED = Caller()


def scopes(claims: Mapping[str, Any]) -> set[str]:
    return set(str(claims.get("scope") or "").split())


def identity(claims: Mapping[str, Any]) -> tuple[str, str | None]:
    """(harvester id, worker id or None) a non-admin token speaks for."""
    scope = scopes(claims)
    if "harvester" not in scope and "pilot" in scope and claims.get("harvester") is not None:
        return str(claims["harvester"]), str(claims.get("worker"))
    return str(claims["sub"]), None


def may_change(claims: Mapping[str, Any] | None, job: Mapping[str, Any] | sqlite3.Row) -> bool:
    """The contract's check on one job row (harvester_id, worker_id), without the reported worker links."""
    if claims is None:
        return True
    scope = scopes(claims)
    if "admin" in scope:
        return True
    if "harvester" in scope and job["harvester_id"] == claims["sub"]:
        return True
    if "pilot" not in scope:
        return False
    if claims.get("harvester") is not None:
        return job["harvester_id"] == str(claims["harvester"]) and job["worker_id"] in (None, str(claims.get("worker")))
    return job["harvester_id"] == claims["sub"]


def _who(caller: Caller) -> str:
    if caller.claims is None:
        return f"a request naming harvester {caller.harvester_id!r}"
    harvester, worker = identity(caller.claims)
    return f"worker {worker} of harvester {harvester!r}" if worker is not None else f"{harvester!r}"


def named_harvester(caller: Caller, harvester_id: Any = None, worker_id: Any = None) -> tuple[str | None, str | None]:
    """(harvester_id, worker_id) a request acts as: the token's identity; a different named one is an AuthError."""
    harvester_id = None if harvester_id in (None, "") else str(harvester_id)
    worker_id = None if worker_id in (None, "") else str(worker_id)
    if caller.claims is None or "admin" in scopes(caller.claims):
        return harvester_id, worker_id
    harvester, worker = identity(caller.claims)
    if harvester_id is not None and harvester_id != harvester:
        raise AuthError(
            f"token of {caller.claims.get('sub')!r} acts for harvester {harvester!r}, "
            f"not {harvester_id!r}: drop harvester_id or send the one the token was issued to"
        )
    if worker is not None and worker_id is not None and worker_id != worker:
        raise AuthError(f"pilot token of worker {worker} of {harvester!r} cannot act for worker {worker_id!r}")
    return harvester, worker if worker is not None else worker_id


def required_harvester(caller: Caller, harvester_id: str) -> str:
    """named_harvester's harvester for a required harvester_id (limits.name(..., required=True) checked it)."""
    name = named_harvester(caller, harvester_id)[0]
    if name is None:  # an empty name: limits.name refused it already
        raise InvalidInput("harvester_id is required")
    return name


def _linked_jobs(conn: sqlite3.Connection, harvester: str, worker: str) -> set[int] | None:
    """The PandaIDs the harvester reported for its worker (update_workers' pandaid_list); None: not reported."""
    row = harvesters.worker_attrs(conn, harvester, worker)
    try:
        listed = json.loads(row[0]).get("pandaid_list") if row and row[0] else None
    except (ValueError, AttributeError):
        return None
    if not isinstance(listed, list):
        return None
    return {int(p) for p in listed if isinstance(p, int) and not isinstance(p, bool)}


class Judge:
    """Decides, inside one write transaction, which jobs a caller may change (worker links read once)."""

    def __init__(self, conn: sqlite3.Connection, caller: Caller) -> None:
        self.conn, self.caller = conn, caller
        self._links: set[int] | None = None
        self._links_read = False

    def allows(self, job: Mapping[str, Any] | sqlite3.Row) -> bool:
        caller = self.caller
        if caller.unchecked:
            return True
        if caller.claims is None:  # trusted mode naming a harvester: a guard against mistakes
            return job["harvester_id"] is None or job["harvester_id"] == caller.harvester_id
        harvester, worker = identity(caller.claims)
        if worker is None:
            return may_change(caller.claims, job)
        if job["harvester_id"] != harvester:
            return False
        if not self._links_read:
            self._links, self._links_read = _linked_jobs(self.conn, harvester, worker), True
        if job["worker_id"] == worker:
            return True
        if self._links is not None:
            return job["panda_id"] in self._links
        return job["worker_id"] is None

    def check(self, job: Mapping[str, Any] | sqlite3.Row) -> None:
        if not self.allows(job):
            raise AuthError(
                f"job {job['panda_id']} was dispatched to harvester {job['harvester_id']!r}"
                f"{'' if job['worker_id'] is None else ' worker ' + str(job['worker_id'])}: "
                f"{_who(self.caller)} may not change it or its event ranges"
            )

    def refused(self, panda_ids: Iterable[int]) -> set[int]:
        """The PandaIDs among these (existing jobs) that the caller may not change."""
        if self.caller.unchecked:
            return set()
        ids = sorted(set(panda_ids))
        out: set[int] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for job in job_rows.owners(self.conn, chunk):
                if not self.allows(job):
                    out.add(job["panda_id"])
        return out


def report_job(report: Any) -> int | None:
    """The PandaID inside a range report's eventRangeID; None when malformed (events.py refuses those)."""
    text = report.get("eventRangeID") if isinstance(report, dict) else None
    match = _PANDA_ID.fullmatch(text) if isinstance(text, str) else None
    return int(match.group(1)) if match else None
