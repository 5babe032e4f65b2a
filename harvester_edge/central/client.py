"""CentralClient: what the harvester's agents call, dialect 2 (/api/v1), through the HTTP seam.

CentralUnavailable (transient: refused, timeout, 5xx) vs CentralRejected (permanent: 4xx, success=false):
the outbox keeps messages across the first and drops or parks them on the second. HTTP 403 (no, expired, revoked
or not-good-enough token) is CentralAuthFailed, a CentralUnavailable: a credential problem is fixed by renewing the
token (the client asks its `renewer` once and retries), never by dropping what the message reports.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harvester_edge.codes import StatusCode
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.seams.http import HttpResult, Transport, TransportError

log = logging.getLogger(__name__)


class CentralUnavailable(HarvesterEdgeError):
    """The central service did not answer usefully (refused, timeout, 5xx): keep the message and try later."""


class CentralAuthFailed(CentralUnavailable):
    """HTTP 403: the token is missing, expired, revoked or lacks the scope. Transient: renew and retry."""


class TokenUnreadable(CentralUnavailable, ValueError):
    """The token file is not a regular file of at most TOKEN_CAP bytes (a directory, a FIFO, something huge)."""


TOKEN_CAP = 64 * 1024  # bytes: a bearer token is a few hundred; anything larger is not one


def read_token_file(path: Path, cap: int = TOKEN_CAP) -> str:
    """The token in a file, stripped ("" when the file is missing): a regular file of at most `cap` bytes, read
    without blocking on a FIFO or a device (a symbolic link to a regular file is the operator's choice)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise TokenUnreadable(f"token file {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenUnreadable(f"token file {path}: not a regular file")
        data = os.read(fd, cap + 1)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise TokenUnreadable(f"token file {path}: over {cap} bytes, not a bearer token")
    return data.decode("utf-8", "replace").strip()


class CentralRejected(HarvesterEdgeError):
    """The central service refused the request (4xx or success=false): retrying the same request will not help."""


class CentralRouteMissing(CentralRejected):
    """The service has no such method: a real PanDA server answers a method it does not serve with HTTP 403 and
    "ERROR : method NAME is forbidden" (not a credentials problem: no token renewal helps). The client then
    refuses calls to that path itself, without a request, for ROUTE_RECHECK seconds (CentralClient.call)."""


ROUTE_RECHECK = 3600.0  # seconds: how long a method the service lacks is not asked for again
_METHOD_FORBIDDEN = re.compile(rb"^ERROR : method \S+ is forbidden")  # the real server's text/plain 403


class CentralServerError(CentralUnavailable):
    """HTTP 500: the service answered, but its code failed. Unlike an outage (no answer, 502/503/504), the request
    reached the API function, which may have done its work first: the real PanDA server's
    event/update_event_ranges writes the ranges and THEN fails to serialise its answer (a set literal). The
    propagator bounds how often it re-sends such a message (agents/propagator.py)."""

    def __init__(self, message: str, body: str = "") -> None:
        super().__init__(message)
        self.body = body


class CentralTimeout(CentralUnavailable):
    """success=false "TimeOut"/"Timed out": the real server's TimedMethod gave up (its database was slow or
    failed). Not a refusal of the content: whether it was written is unknown, so the message is kept and re-sent."""


TIMEOUT_MESSAGES = ("TimeOut", "Timed out")  # the real server's TIME_OUT and its acquire_jobs/update_job text
NO_JOBS = "No jobs in PanDA"  # the real server's acquire_jobs answer when it has no job: success=false, not an error
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # pilot/update_job start_time/end_time (UTC)

# the camelCase names of PanDA's job updates (what our outbox holds) -> the /api/v1 update_job parameters
V1_JOB_FIELDS = {
    "jobId": "job_id",
    "PandaID": "job_id",
    "state": "job_status",
    "jobStatus": "job_status",
    "transExitCode": "trans_exit_code",
    "pilotErrorCode": "pilot_error_code",
    "pilotErrorDiag": "pilot_error_diag",
    "exeErrorCode": "exe_error_code",
    "exeErrorDiag": "exe_error_diag",
    "node": "node",
    "nEvents": "n_events",
    "coreCount": "core_count",
    "attemptNr": "attempt_nr",
    "startTime": "start_time",
    "endTime": "end_time",
    "schedulerID": "scheduler_id",
    "pilotID": "pilot_id",
    "siteName": "site_name",
    "batchID": "batch_id",
    "jobMetrics": "job_metrics",
    "metaData": "meta_data",
    "cpuConsumptionTime": "cpu_consumption_time",
    "maxRSS": "max_rss",
    "maxVMEM": "max_vmem",
    "maxPSS": "max_pss",
    "jobSubStatus": "job_sub_status",
    "nInputFiles": "n_input_files",
}


def v1_time(value: Any) -> Any:
    """Epoch seconds -> "%Y-%m-%d %H:%M:%S" UTC (the only form the real update_job parses); strings pass."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return time.strftime(TIME_FORMAT, time.gmtime(value))
    return value


def v1_job_update(update: dict) -> dict:
    """One entry of pilot/update_jobs_bulk as the real server's update_job accepts it: snake_case names (unknown
    names are an "Argument error" there), times as text. Pure; snake_case entries pass unchanged."""
    out = {}
    for key, value in update.items():
        name = V1_JOB_FIELDS.get(key, key)
        if value is None:
            continue
        out[name] = v1_time(value) if name in ("start_time", "end_time") else value
    return out


def job_answer(entry: Any) -> dict:
    """One per-job answer of update_jobs_bulk: the real server's envelope {success, message, data: {StatusCode,
    command}} (older services: the bare {StatusCode, command}) -> {"ok", "StatusCode", "command", "ErrorDiag"}."""
    if isinstance(entry, dict) and "success" in entry:
        raw = entry.get("data")
        data: dict = raw if isinstance(raw, dict) else {}
        code = data.get("StatusCode", StatusCode.SUCCESS if entry.get("success") else StatusCode.FAILED)
        diag = data.get("ErrorDiag") or entry.get("message") or ""
        ok = bool(entry.get("success")) and code == StatusCode.SUCCESS
        return {"ok": ok, "StatusCode": code, "command": data.get("command"), "ErrorDiag": diag}
    if isinstance(entry, dict):
        code = entry.get("StatusCode", StatusCode.FAILED)
        return {
            "ok": code == StatusCode.SUCCESS,
            "StatusCode": code,
            "command": entry.get("command"),
            "ErrorDiag": entry.get("ErrorDiag", ""),
        }
    return {
        "ok": False,
        "StatusCode": StatusCode.FAILED,
        "command": None,
        "ErrorDiag": f"unreadable answer {entry!r:.200}",
    }


def parse_envelope(method: str, path: str, result: HttpResult) -> Any:
    """data of a v1 answer, or the matching error. Pure: tested on saved answers."""
    if result.status == 403 and _METHOD_FORBIDDEN.match(result.body[:300]):
        raise CentralRouteMissing(
            f"{method} {path}: the central service has no such method "
            f"(HTTP 403: {result.body[:200].decode('utf-8', 'replace')!r})"
        )
    if result.status == 403:
        try:
            doc = json.loads(result.body)
            message = doc.get("message") if isinstance(doc, dict) else doc
        except ValueError:
            message = result.body[:200]
        raise CentralAuthFailed(f"{method} {path}: HTTP 403 (credentials): {message}")
    if result.status == 500:
        body = result.body[:500].decode("utf-8", "replace")
        raise CentralServerError(f"{method} {path}: HTTP 500 from the central service: {body[:200]!r}", body)
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
        if result.status == 200 and message in TIMEOUT_MESSAGES:
            raise CentralTimeout(f"{method} {path}: the central service timed out ({message}); retry later")
        raise CentralRejected(f"{method} {path}: HTTP {result.status}: {message}")
    return doc.get("data")


class Reachability:
    """Since when the central service has given no answer (refused, reset, timed out, a gateway's 502/503/504),
    as the client saw it on its calls: the alerts agent's `central_unreachable` rule reads it. `clock`: epoch
    seconds (build_site passes the site's clock)."""

    GATEWAY = (502, 503, 504)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.unreachable_since: float | None = None
        self.last_answer_at: float | None = None
        self.last_error: str | None = None

    def answered(self, status: int) -> None:
        if status in self.GATEWAY:
            self.failed(f"HTTP {status}")
            return
        self.last_answer_at = self.clock()
        self.unreachable_since = None
        self.last_error = None

    def failed(self, error: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = self.clock()
        self.last_error = error

    def resume(self, since: float, error: str) -> None:
        """An outage an earlier daemon saw (the alerts table): it goes on from `since` until an answer comes."""
        if self.last_answer_at is None:
            self.unreachable_since = min(since, self.unreachable_since or since)
            self.last_error = self.last_error or error

    def seconds_unreachable(self, now: float) -> float:
        return 0.0 if self.unreachable_since is None else max(0.0, now - self.unreachable_since)


class CentralClient:
    def __init__(
        self,
        transport: Transport,
        token: str | None = None,
        token_file: Path | None = None,
        origin: str | None = None,
        harvester_id: str | None = None,
    ) -> None:
        self.transport = transport
        self.harvester_id = harvester_id
        self._token = token
        self.token_file = Path(token_file) if token_file else None
        self.origin = origin
        # renewer(force=True) -> bool: called once when a call gets 403, then the call is retried (if it said True).
        # Set by the credentials agent; None = no renewal (a plain client).
        self.renewer: Callable[..., bool] | None = None
        self.issuer: Any = None  # where fresh tokens come from (harvester_edge.agents.credentials)
        self.reach = Reachability()
        self.missing: dict[str, tuple[float, str]] = {}  # path -> (when the service said it has no such method, why)

    def current_token(self) -> str | None:
        """The token file, read on every call (an external tool renews it, as on real sites), else the token held."""
        return self.token_in_use()[1]

    def token_in_use(self) -> tuple[str, str | None]:
        """(where it comes from: the token file's path or "client", the token): the token file when it has one
        with content, else the token held. A token file that is not a regular file of at most TOKEN_CAP bytes
        raises TokenUnreadable (a CentralUnavailable: the call is not made)."""
        if self.token_file is not None:
            text = read_token_file(self.token_file)
            if text:
                return str(self.token_file), text
        return "client", self._token

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

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        body: Any = None,
        timeout: float | None = None,
        renew: bool = True,
        bearer: str | None = None,
    ) -> Any:
        known = self.missing.get(path)
        if known is not None:
            if self.reach.clock() - known[0] < ROUTE_RECHECK:
                raise CentralRouteMissing(known[1])
            del self.missing[path]
        try:
            return self._call(method, path, params, body, timeout, bearer)
        except CentralRouteMissing as exc:
            self.missing[path] = (self.reach.clock(), str(exc))
            log.warning("%s; not asked again for %.0f s", exc, ROUTE_RECHECK)
            raise
        except CentralAuthFailed:
            if not renew or self.renewer is None or not self.renewer(force=True):
                raise
            log.info("%s %s: credentials refused, token renewed, retrying once", method, path)
            return self._call(method, path, params, body, timeout)

    def _call(
        self, method: str, path: str, params: Any, body: Any, timeout: float | None, bearer: str | None = None
    ) -> Any:
        try:
            result = self.transport.request(
                method, "/api/v1/" + path, params=params, json=body, headers=self._headers(bearer), timeout=timeout
            )
        except TransportError as exc:
            self.reach.failed(str(exc))
            raise CentralUnavailable(f"central service at {self.transport.base_url} unreachable: {exc}") from exc
        self.reach.answered(result.status)
        return parse_envelope(method, path, result)

    # -- pilot / jobs ---------------------------------------------------------------------------------------
    def acquire_jobs(
        self,
        site: str,
        queue: str | None = None,
        n_jobs: int = 1,
        harvester_id: str | None = None,
        worker_id: int | str | None = None,
        node: str | None = None,
        **extra: Any,
    ) -> list[dict]:
        if isinstance(worker_id, str) and worker_id.isdigit():
            worker_id = int(worker_id)  # the real acquire_jobs takes worker_id: int (a JSON string is a Type error)
        body = {
            "site_name": site,
            "computing_element": queue,
            "n_jobs": n_jobs,
            "harvester_id": harvester_id or self.harvester_id,
            "worker_id": worker_id,
            "node": node,
            **extra,
        }
        try:
            data = self.call("POST", "pilot/acquire_jobs", body={k: v for k, v in body.items() if v is not None})
        except CentralRejected as exc:
            if str(exc).endswith(NO_JOBS):  # the real server: no job is success=false "No jobs in PanDA"
                return []
            raise
        return list((data or {}).get("jobs") or [])

    def update_job(self, job_id: int, state: str, **fields: Any) -> dict:
        return self.call("POST", "pilot/update_job", body={"job_id": job_id, "job_status": state, **fields})

    def update_jobs_bulk(self, updates: list[dict], harvester_id: str | None = None) -> list[dict]:
        """updates: job updates, camelCase ({"jobId", "state", "nEvents", "endTime": epoch}) or the v1 names; sent
        as the real update_job parameters (v1_job_update). One answer per job: {"ok", "StatusCode", "command",
        "ErrorDiag"} (job_answer)."""
        body: dict[str, object] = {"job_list": [v1_job_update(u) for u in updates]}
        hid = harvester_id or self.harvester_id
        if hid:
            body["harvester_id"] = hid
        data = self.call("POST", "pilot/update_jobs_bulk", body=body)
        return [job_answer(entry) for entry in (data or [])]

    def get_job_status(self, job_ids: list[int]) -> list[dict]:
        """[{"job_id", "status", "attempt_number"}] (the real answer); job_ids go as a repeated query parameter."""
        return self.call("GET", "pilot/get_job_status", params={"job_ids": [int(j) for j in job_ids]})

    # -- event ranges ---------------------------------------------------------------------------------------
    def acquire_event_ranges(
        self, job_id: int, jobset_id: int, task_id: int | None = None, n_ranges: int = 10
    ) -> list[dict]:
        """jobset_id: the job's own jobsetID (from its description), never the task id."""
        body = {"job_id": int(job_id), "jobset_id": int(jobset_id), "n_ranges": int(n_ranges)}
        if task_id is not None:
            body["task_id"] = int(task_id)
        return self.call("POST", "event/acquire_event_ranges", body=body) or []

    def update_event_ranges(self, reports: list[dict], version: int = 0) -> dict:
        """Returns {"Returns": [bool...], "Commands": {PandaID: command}} (the embedded service adds "Results":
        ['applied'|'duplicate'|'stale'|'ignored'...]). HTTP 500: CentralServerError (see the propagator)."""
        return self.call(
            "POST", "event/update_event_ranges", body={"event_ranges": json.dumps(reports), "version": version}
        )

    def available_range_count(
        self, task_id: int | None = None, job_id: int | None = None, jobset_id: int | None = None
    ) -> int:
        """Ranges still to hand out for the job's task. The real server needs all three ids (job_id, jobset_id,
        task_id: the propagator sends them); the embedded service counts by task (or all tasks)."""
        params = {} if task_id is None else {"task_id": int(task_id)}
        if job_id is not None:
            params["job_id"] = int(job_id)
        if jobset_id is not None:
            params["jobset_id"] = int(jobset_id)
        return int(self.call("GET", "event/get_available_event_range_count", params=params) or 0)

    def work_shortage(self) -> dict:
        """{"shortage": bool, "mode", "reason"}: whether the service declares a WORK_SHORTAGE (central/shortage.py)."""
        return dict(self.call("GET", "harvester/get_work_shortage") or {})

    # -- payload logs (central/paylogs.py) ------------------------------------------------------------------
    def upload_payload_logs(self, source: str, records: list[dict], harvester_id: str | None = None) -> dict:
        """Lines of one pilot file (source: its name, records: each with its byte offset): {stored, duplicate,
        dropped, refused}."""
        body = {"harvester_id": harvester_id or self.harvester_id, "source": source, "records": records}
        return dict(self.call("POST", "logs/upload", body=body) or {})

    def payload_logs(self, **filters: Any) -> dict:
        """{lines, last_id, truncated} of the lines matching task_id, panda_id, rank, stream, grep, after id, limit."""
        params = {key: value for key, value in filters.items() if value is not None}
        return dict(self.call("GET", "logs/list", params=params) or {})

    # -- harvester ------------------------------------------------------------------------------------------
    def _hid(self, harvester_id: str | None) -> str:
        hid = harvester_id or self.harvester_id
        if not hid:
            raise CentralRejected("no harvester_id: pass it to CentralClient(harvester_id=...) or to the call")
        return hid

    def failed_tasks(
        self, since: float = 0.0, limit: int = 100, harvester_id: str | None = None, timeout: float | None = None
    ) -> dict:
        """{tasks: [{task_id, name, diag, modified}] newest first, truncated}: the failed tasks this harvester had
        jobs of (harvester/get_failed_tasks)."""
        params = {"harvester_id": self._hid(harvester_id), "since": since, "limit": limit}
        return dict(self.call("GET", "harvester/get_failed_tasks", params=params, timeout=timeout) or {})

    def update_workers(self, workers: list[dict], harvester_id: str | None = None) -> list[bool]:
        """workers: dicts with workerID, status, computingSite, nodeID, ... (Harvester's worker spec)."""
        return self.call(
            "POST", "harvester/update_workers", body={"harvester_id": self._hid(harvester_id), "workers": workers}
        )

    def heartbeat(self, data: dict | None = None, harvester_id: str | None = None) -> Any:
        return self.call("POST", "harvester/heartbeat", body={"harvester_id": self._hid(harvester_id), "data": data})

    def update_worker_pilot_status(
        self,
        worker_id: str,
        status: str,
        site: str | None = None,
        node: str | None = None,
        harvester_id: str | None = None,
    ) -> Any:
        """pilot/update_worker_status (worker_id, harvester_id, status, node_id): the real server knows no site."""
        body = {"harvester_id": self._hid(harvester_id), "worker_id": str(worker_id), "status": status}
        if node is not None:
            body["node_id"] = node
        return self.call("POST", "pilot/update_worker_status", body=body)

    # -- credentials ----------------------------------------------------------------------------------------
    def get_access_token(self, client_name: str, token_key: str, bearer: str | None = None) -> str:
        """A fresh token for client_name with its key; `bearer` instead of the client's own token if given.
        renew=False: this IS the renewal, a 403 here must not call the renewer again."""
        data = self.call(
            "GET",
            "creds/get_access_token",
            params={"client_name": client_name, "token_key": token_key},
            renew=False,
            bearer=bearer,
        )
        return _field(data, "user_proxy", "creds/get_access_token")

    def get_token_key(self, client_name: str) -> str:
        data = self.call("GET", "creds/get_token_key", params={"client_name": client_name}, renew=False)
        return _field(data, "tokenKey", "creds/get_token_key")

    # -- tasks (operators) ----------------------------------------------------------------------------------
    def submit_task(self, spec: dict) -> int:
        return self.call("POST", "task/submit", body=spec)["task_id"]

    def is_alive(self, timeout: float = 5.0) -> bool:
        """success=true is alive (the real server answers data null)."""
        try:
            self.call("GET", "system/is_alive", timeout=timeout)
            return True
        except (CentralUnavailable, CentralRejected):
            return False


def _field(data: Any, key: str, path: str) -> str:
    """The real creds answers are objects ({"user_proxy": ...}, {"tokenKey": ...}); a bare string is accepted."""
    if isinstance(data, dict) and isinstance(data.get(key), str):
        return data[key]
    if isinstance(data, str):
        return data
    raise CentralRejected(f"{path}: expected data {{{key!r}: <text>}}, got {type(data).__name__}")
