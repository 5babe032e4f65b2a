"""CentralClient: what the harvester's agents call, dialect 2 (/api/v1), through the HTTP seam.

CentralUnavailable (transient: refused, timeout, 5xx) vs CentralRejected (permanent: 4xx, success=false):
the outbox keeps messages across the first and drops or parks them on the second. HTTP 403 (no, expired, revoked
or not-good-enough token) is CentralAuthFailed, a CentralUnavailable: a credential problem is fixed by renewing the
token (the client asks its `renewer` once and retries), never by dropping what the message reports.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.seams.http import HttpResult, HttpTransport, TransportError

log = logging.getLogger(__name__)


class CentralUnavailable(HarvesterEdgeError):
    """The central service did not answer usefully (refused, timeout, 5xx): keep the message and try later."""


class CentralAuthFailed(CentralUnavailable):
    """HTTP 403: the token is missing, expired, revoked or lacks the scope. Transient: renew and retry."""


class CentralRejected(HarvesterEdgeError):
    """The central service refused the request (4xx or success=false): retrying the same request will not help."""


def parse_envelope(method: str, path: str, result: HttpResult) -> Any:
    """data of a v1 answer, or the matching error. Pure: tested on saved answers."""
    if result.status == 403:
        try:
            doc = json.loads(result.body)
            message = doc.get("message") if isinstance(doc, dict) else doc
        except ValueError:
            message = result.body[:200]
        raise CentralAuthFailed(f"{method} {path}: HTTP 403 (credentials): {message}")
    if result.status >= 500:
        raise CentralUnavailable(f"{method} {path}: HTTP {result.status} from the central service; retry later")
    try:
        doc = json.loads(result.body)
    except ValueError as exc:
        if result.status >= 400:
            raise CentralRejected(f"{method} {path}: HTTP {result.status}: {result.body[:200]!r}") from exc
        raise CentralUnavailable(f"{method} {path}: answer is not JSON: {result.body[:200]!r}") from exc
    if result.status >= 400 or not isinstance(doc, dict) or not doc.get("success"):
        message = doc.get("message") if isinstance(doc, dict) else doc
        raise CentralRejected(f"{method} {path}: HTTP {result.status}: {message}")
    return doc.get("data")


class CentralClient:
    def __init__(self, transport: HttpTransport, token: str | None = None, token_file: Path | None = None,
                 origin: str | None = None, harvester_id: str | None = None) -> None:
        self.transport = transport
        self.harvester_id = harvester_id
        self._token = token
        self.token_file = Path(token_file) if token_file else None
        self.origin = origin
        # renewer(force=True) -> bool: called once when a call gets 403, then the call is retried (if it said True).
        # Set by the credentials agent; None = no renewal (a plain client).
        self.renewer: Callable[..., bool] | None = None
        self.issuer: Any = None  # where fresh tokens come from (harvester_edge.agents.credentials)

    def current_token(self) -> str | None:
        if self._token is not None:
            return self._token
        if self.token_file is not None and self.token_file.exists():
            return self.token_file.read_text().strip() or None
        return None

    def _headers(self, bearer: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = bearer or self.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.origin:
            headers["Origin"] = self.origin
        return headers

    def set_token(self, token: str | None) -> None:
        self._token = token

    def call(self, method: str, path: str, *, params: Any = None, body: Any = None,
             timeout: float | None = None, renew: bool = True, bearer: str | None = None) -> Any:
        try:
            return self._call(method, path, params, body, timeout, bearer)
        except CentralAuthFailed:
            if not renew or self.renewer is None or not self.renewer(force=True):
                raise
            log.info("%s %s: credentials refused, token renewed, retrying once", method, path)
            return self._call(method, path, params, body, timeout)

    def _call(self, method: str, path: str, params: Any, body: Any, timeout: float | None,
              bearer: str | None = None) -> Any:
        try:
            result = self.transport.request(method, "/api/v1/" + path, params=params, json=body,
                                            headers=self._headers(bearer), timeout=timeout)
        except TransportError as exc:
            raise CentralUnavailable(f"central service at {self.transport.base_url} unreachable: {exc}") from exc
        return parse_envelope(method, path, result)

    # -- pilot / jobs ---------------------------------------------------------------------------------------
    def acquire_jobs(self, site: str, queue: str | None = None, n_jobs: int = 1, harvester_id: str | None = None,
                     worker_id: str | None = None, node: str | None = None, **extra: Any) -> list[dict]:
        body = {"site_name": site, "computing_element": queue, "n_jobs": n_jobs,
                "harvester_id": harvester_id or self.harvester_id,
                "worker_id": worker_id, "node": node, **extra}
        data = self.call("POST", "pilot/acquire_jobs", body={k: v for k, v in body.items() if v is not None})
        return list(data.get("jobs") or [])

    def update_job(self, job_id: int, state: str, **fields: Any) -> dict:
        return self.call("POST", "pilot/update_job", body={"job_id": job_id, "job_status": state, **fields})

    def update_jobs_bulk(self, updates: list[dict], harvester_id: str | None = None) -> list[dict]:
        """updates: PanDA-style dicts {"jobId", "state", ...}; one answer {"StatusCode", ...} each."""
        return self.call("POST", "pilot/update_jobs_bulk",
                         body={"job_list": updates, "harvester_id": harvester_id or self.harvester_id})

    def get_job_status(self, job_ids: list[int]) -> list[dict]:
        return self.call("GET", "pilot/get_job_status", params={"job_ids": ",".join(map(str, job_ids))})

    # -- event ranges ---------------------------------------------------------------------------------------
    def acquire_event_ranges(self, job_id: int, task_id: int | None = None, n_ranges: int = 10) -> list[dict]:
        body = {"job_id": job_id, "n_ranges": n_ranges}
        if task_id is not None:
            body.update(task_id=task_id, jobset_id=task_id)
        return self.call("POST", "event/acquire_event_ranges", body=body)

    def update_event_ranges(self, reports: list[dict], version: int = 0) -> dict:
        """Returns {"Returns": [bool...], "Results": ['applied'|'duplicate'|'stale'|'ignored'...], "Command"}."""
        return self.call("POST", "event/update_event_ranges",
                         body={"event_ranges": json.dumps(reports), "version": version})

    def available_range_count(self, task_id: int | None = None) -> int:
        return self.call("GET", "event/get_available_event_range_count",
                         params={} if task_id is None else {"task_id": task_id})

    # -- harvester ------------------------------------------------------------------------------------------
    def _hid(self, harvester_id: str | None) -> str:
        hid = harvester_id or self.harvester_id
        if not hid:
            raise CentralRejected("no harvester_id: pass it to CentralClient(harvester_id=...) or to the call")
        return hid

    def update_workers(self, workers: list[dict], harvester_id: str | None = None) -> list[bool]:
        """workers: dicts with workerID, status, computingSite, nodeID, ... (Harvester's worker spec)."""
        return self.call("POST", "harvester/update_workers",
                         body={"harvester_id": self._hid(harvester_id), "workers": workers})

    def heartbeat(self, data: dict | None = None, harvester_id: str | None = None) -> Any:
        return self.call("POST", "harvester/heartbeat", body={"harvester_id": self._hid(harvester_id), "data": data})

    def update_worker_pilot_status(self, worker_id: str, status: str, site: str | None = None,
                                   node: str | None = None, harvester_id: str | None = None) -> Any:
        return self.call("POST", "pilot/update_worker_pilot_status",
                         body={"harvester_id": self._hid(harvester_id), "worker_id": worker_id, "status": status,
                               "site": site, "node_id": node})

    # -- credentials ----------------------------------------------------------------------------------------
    def get_access_token(self, client_name: str, token_key: str, bearer: str | None = None) -> str:
        """A fresh token for client_name with its key; `bearer` instead of the client's own token if given.
        renew=False: this IS the renewal, a 403 here must not call the renewer again."""
        return self.call("GET", "creds/get_access_token", params={"client_name": client_name, "token_key": token_key},
                         renew=False, bearer=bearer)

    def get_token_key(self, client_name: str) -> str:
        return self.call("GET", "creds/get_token_key", params={"client_name": client_name}, renew=False)

    # -- tasks (operators) ----------------------------------------------------------------------------------
    def submit_task(self, spec: dict) -> int:
        return self.call("POST", "task/submit", body=spec)["task_id"]

    def is_alive(self, timeout: float = 5.0) -> bool:
        try:
            return self.call("GET", "system/is_alive", timeout=timeout) == "alive"
        except (CentralUnavailable, CentralRejected):
            return False
