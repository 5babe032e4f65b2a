"""The hot /api/v1 writes (job updates, event ranges) on a lean ASGI path in front of FastAPI.

FastAPI's middleware stack costs more per request than the group-committed database work, so FastPath answers
these few POSTs itself: the same pydantic models (validate_json, in Rust), the same token check, the same
service operations awaited on the event loop (Database.write_async: no thread hop, one transaction per loop
iteration). The FastAPI routes in v1.py stay for the OpenAPI docs and call the same table.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from harvester_edge.codes import StatusCode
from harvester_edge.errors import StoreError

from . import models as m
from .auth import check_token
from .bodies import DEFAULT_MAX_BODY, BodyReceiver, Disconnected, answer, parse_json, read_body
from .brokerage import Resources
from .errors import AuthError, CentralError, InvalidInput, NoJobs
from .ownership import Caller
from .service import CentralService, Op

log = logging.getLogger(__name__)

loads: Callable[[bytes | str], Any]
try:  # optional: orjson encodes/decodes the 100-range bodies several times faster
    import orjson

    def dumps(doc: Any) -> bytes:
        return orjson.dumps(doc, default=str)

    loads = orjson.loads
except ImportError:  # pragma: no cover - plain json works, only slower

    def dumps(doc: Any) -> bytes:
        return json.dumps(doc, default=str).encode()

    loads = json.loads


def json_list(value: list | str, name: str) -> list:
    if isinstance(value, str):
        value = parse_json(value, name)
    if not isinstance(value, list):
        raise InvalidInput(f"{name} must be a JSON list, got {type(value).__name__}")
    return value


def validation_message(exc: ValidationError, prefix: str = "body") -> str:
    parts = [f"{'.'.join(str(p) for p in (prefix, *e['loc']))}: {e['msg']}" for e in exc.errors()]
    return "invalid request: " + "; ".join(parts)[:2000]


NO_JOBS = "No jobs in PanDA"


def jobs_answer(jobs: list) -> dict:
    """The real server's acquire_jobs: {"StatusCode": 0, "jobs": [...]}, and no job is success=false NO_JOBS."""
    if not jobs:
        raise NoJobs(NO_JOBS)
    return {"StatusCode": StatusCode.SUCCESS, "jobs": jobs}


def bulk_answer(answers: list[dict]) -> list[dict]:
    """update_jobs_bulk as the real server answers it: one update_job envelope per job, in order."""
    out = []
    for a in answers:
        code = a.get("StatusCode", StatusCode.FAILED)
        data = {"StatusCode": code, "command": a.get("command")}
        if code:
            data["ErrorDiag"] = a.get("ErrorDiag", "")
        out.append(
            {
                "success": code == StatusCode.SUCCESS,
                "message": "" if code == StatusCode.SUCCESS else a.get("ErrorDiag", ""),
                "data": data,
            }
        )
    return out


def ranges_answer(result: dict) -> dict:
    """update_event_ranges: the real (intended) answer {"Returns", "Commands"} plus StatusCode 0 and our Results."""
    return {
        "StatusCode": StatusCode.SUCCESS,
        "Returns": result["Returns"],
        "Commands": {},
        "Results": result["Results"],
        "Command": result.get("Command"),
    }


@dataclass(frozen=True)
class Hot:
    module: str
    model: type[BaseModel]
    op: Callable[[CentralService, Any, Caller], Op]
    answer: Callable[[Any], Any] = lambda value: value


HOT: dict[str, Hot] = {
    "pilot/acquire_jobs": Hot(
        "pilot",
        m.AcquireJobs,
        lambda s, b, c: s.acquire_jobs_op(
            b.site_name,
            b.n_jobs,
            b.harvester_id,
            None if b.worker_id is None else str(b.worker_id),
            b.node,
            caller=c,
            resources=Resources.of(b.computing_element, b.memory, b.memory_min, b.core_count),
        ),
        jobs_answer,
    ),
    "pilot/update_job": Hot(
        "pilot",
        m.UpdateJob,
        lambda s, b, c: s.update_job_op(b.job_id, b.job_status, m.camel_job(b.model_dump(exclude_none=True)), caller=c),
        lambda command: {"StatusCode": StatusCode.SUCCESS, "command": command},
    ),
    "pilot/update_jobs_bulk": Hot(
        "pilot",
        m.UpdateJobsBulk,
        lambda s, b, c: s.update_jobs_bulk_op(
            [m.camel_job(u) if isinstance(u, dict) else u for u in json_list(b.job_list, "job_list")], caller=c
        ),
        bulk_answer,
    ),
    "event/acquire_event_ranges": Hot(
        "event", m.AcquireRanges, lambda s, b, c: s.acquire_event_ranges_op(b.job_id, b.task_id, b.n_ranges, caller=c)
    ),
    "event/update_event_ranges": Hot(
        "event",
        m.UpdateRanges,
        lambda s, b, c: s.update_event_ranges_op(json_list(b.event_ranges, "event_ranges"), b.version, caller=c),
        ranges_answer,
    ),
}


async def call_hot(hot: Hot, service: CentralService, body: Any, claims: dict | None = None) -> Any:
    """claims: the caller's token claims (None in trusted mode); the service checks who owns what (ownership.py)."""
    caller = Caller(claims, getattr(body, "harvester_id", None))
    return hot.answer(await service.run_async(hot.op(service, body, caller)))


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            auth = value.decode("latin-1")
            return auth[7:].strip() if auth[:7].lower() == "bearer " else None
    return None


class FastPath:
    """ASGI wrapper: answers the HOT POSTs directly, passes everything else to the FastAPI app."""

    def __init__(self, app: Any) -> None:
        self.app: ASGIApp = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        hot = (
            HOT.get(path[8:])
            if scope["type"] == "http" and scope["method"] == "POST" and path.startswith("/api/v1/")
            else None
        )
        if hot is None:
            await self.app(scope, receive, send)
            return
        status, doc = 200, None
        incoming = BodyReceiver(receive)
        try:  # the order matters: the token, the declared size, then (only then) the body
            headers = scope["headers"]
            claims = None
            if self.state.authority is not None:
                claims = check_token(self.state.authority, bearer_token(headers), hot.module)
            limit = getattr(self.state.settings, "max_body", DEFAULT_MAX_BODY)
            body = await read_body(incoming, headers, limit, timeout=getattr(self.state.settings, "body_timeout", None))
            parse_json(body)  # depth and encoding; the model then validates the same bytes in Rust
            try:
                model = hot.model.model_validate_json(body)
            except ValidationError as exc:
                raise InvalidInput(validation_message(exc)) from exc
            doc = {"success": True, "message": "", "data": await call_hot(hot, self.state.service, model, claims)}
        except Disconnected:
            return
        except AuthError as exc:
            status, doc = 403, {"success": False, "message": str(exc), "data": None}
        except CentralError as exc:
            status, doc = getattr(exc, "http_status", 200), {"success": False, "message": str(exc), "data": None}
        except StoreError as exc:  # the database cannot answer now: an outage to the client, which retries
            log.warning("central DB unavailable answering %s: %s", path, exc)
            status, doc = 503, {"success": False, "message": "database unavailable, retry", "data": None}
        except Exception:
            log.exception("unexpected error answering %s", path)
            status, doc = 500, {"success": False, "message": "internal error (logged by the service)", "data": None}
        payload = dumps(doc)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await answer(send, incoming, status, headers, payload)
