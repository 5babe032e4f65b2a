"""The legacy /server/panda/<method> dialect (pilot 3.11): form or JSON bodies, urlencoded answers.

Pilot 3.11 gzips its JSON body WITHOUT a Content-Encoding header: the gzip magic (1f 8b) is detected and the body
inflated (capped) by gate.CappedBodies before the route runs, after the token check.
JSON booleans arrive as the strings "True"/"False". Answers are urlencoded unless Accept asks for JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from harvester_edge.codes import StatusCode

from . import limits
from .auth import authorize
from .bodies import parse_json
from .brokerage import Resources
from .errors import AuthError, CentralError, InvalidInput
from .ownership import Caller

router = APIRouter()


# -- pure parse / render ------------------------------------------------------------------------------------
def parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    """Parameters of a legacy request body (already inflated): JSON or form-encoded."""
    if not body.strip():
        return {}
    if "json" in content_type or body.lstrip()[:1] == b"{":
        data = parse_json(body)
        if not isinstance(data, dict):
            raise InvalidInput(f"JSON body must be an object of parameters, got {type(data).__name__}")
        return data
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError as exc:
        raise InvalidInput("form body is not UTF-8") from exc


def render(answer: Any, want_json: bool) -> Response:
    if isinstance(answer, (str, bytes)):
        return Response(answer, media_type="text/plain")
    if want_json:
        return Response(json.dumps(answer, default=str), media_type="application/json")
    flat = {
        k: (v if isinstance(v, (str, int, float)) and not isinstance(v, bool) else json.dumps(v, default=str))
        for k, v in answer.items()
    }
    return Response(urlencode(flat), media_type="text/plain")


def boolean(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def integer(params: dict, name: str, default: int | None = None, low: int = 0, high: int = 2**62) -> int:
    value = params.get(name, default)
    if value is None or value == "":
        if default is None:
            raise InvalidInput(f"parameter {name} is required")
        return default
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"parameter {name} must be an integer, got {value!r:.80}") from exc
    if isinstance(value, bool) or not low <= number <= high:
        raise InvalidInput(f"parameter {name} must be an integer in [{low}, {high}], got {value!r:.80}")
    return number


def json_param(params: dict, name: str) -> Any:
    value = params.get(name)
    if isinstance(value, (list, dict)):
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"parameter {name} is required (a JSON string)")
    return parse_json(value, f"parameter {name}")


# -- methods ------------------------------------------------------------------------------------------------
def caller(p: dict, claims) -> Caller:
    """Who sends the request (ownership.py): the token's claims and the harvester_id it names, if any."""
    named = p.get("harvester_id")
    return Caller(claims, None if named in (None, "") else str(named))


NO_JOBS = "no jobs in PanDA: no activated job of an active task"  # the pilot's ES path looks for 'no jobs in PanDA'


def get_job(svc, p: dict, claims) -> Any:
    n_jobs = integer(p, "nJobs", 0, 0, 10_000)
    jobs = svc.acquire_jobs(
        str(p.get("siteName") or "unknown"),
        max(n_jobs, 1),
        p.get("harvester_id"),
        p.get("worker_id"),
        p.get("node"),
        caller=caller(p, claims),
        resources=Resources.of(p.get("computingElement"), p.get("mem"), p.get("memMin"), p.get("coreCount")),
    )
    if "nJobs" in p:
        return (
            {"StatusCode": StatusCode.SUCCESS, "jobs": jobs}
            if jobs
            else {"StatusCode": StatusCode.NO_JOBS, "jobs": [], "errorDialog": NO_JOBS}
        )
    if not jobs:
        return {"StatusCode": StatusCode.NO_JOBS, "errorDialog": NO_JOBS}
    return {**jobs[0], "StatusCode": StatusCode.SUCCESS, "nSent": 0}


def update_job(svc, p: dict, claims) -> Any:
    job_id = integer(p, "jobId")
    return {
        "StatusCode": StatusCode.SUCCESS,
        "command": svc.update_job(job_id, p.get("state"), dict(p), caller=caller(p, claims)),
    }


def update_jobs_in_bulk(svc, p: dict, claims) -> Any:
    updates = json_param(p, "jobList")
    for u in updates if isinstance(updates, list) else []:
        job_id = u.get("jobId") if isinstance(u, dict) else None
        if isinstance(job_id, str) and job_id.isdigit() and job_id.isascii() and len(job_id) < 19:
            u["jobId"] = int(u["jobId"])
    answers = svc.update_jobs_bulk(updates, caller=caller(p, claims))
    return json.dumps((True, answers))


def get_status(svc, p: dict, claims) -> Any:
    ids = str(p.get("ids") or "").replace(",", " ").split()
    if not ids or not all(i.isdigit() and i.isascii() and len(i) < 19 for i in ids):
        raise InvalidInput("parameter ids must be PandaIDs separated by spaces")
    rows = svc.job_status([int(i) for i in ids])
    return {
        "StatusCode": StatusCode.SUCCESS,
        "status": "+".join(r["status"] for r in rows),
        "attemptNr": "+".join(str(r["attemptNr"]) for r in rows),
    }


def get_event_ranges(svc, p: dict, claims) -> Any:
    task = p.get("taskID")
    ranges = svc.acquire_event_ranges(
        integer(p, "pandaID"),
        None if task in (None, "") else integer(p, "taskID"),
        integer(p, "nRanges", 10, 1, 100_000),
        caller=caller(p, claims),
    )
    return {"StatusCode": StatusCode.SUCCESS, "eventRanges": ranges}


def update_event_ranges(svc, p: dict, claims) -> Any:
    out = svc.update_event_ranges(
        json_param(p, "eventRanges"), integer(p, "version", 0, 0, 1), caller=caller(p, claims)
    )
    return {"StatusCode": StatusCode.SUCCESS, "Returns": out["Returns"], "Command": out["Command"]}


def update_worker_pilot_status(svc, p: dict, claims) -> Any:
    if not p.get("harvesterID") or p.get("workerID") in (None, ""):
        raise InvalidInput("parameters harvesterID and workerID are required")
    svc.update_worker_pilot_status(
        p["harvesterID"],
        p["workerID"],
        p.get("status"),
        p.get("site"),
        p.get("node_id"),
        caller=Caller(claims, str(p["harvesterID"])),
    )
    return {"StatusCode": StatusCode.SUCCESS}


def get_access_token(svc, p: dict, claims, authority=None) -> Any:
    if authority is None:
        raise InvalidInput("the service runs in trusted mode: there are no tokens to get")
    name = limits.name("client_name", p.get("client_name")) or ""
    key = limits.name("token_key", p.get("token_key")) or ""
    return {"StatusCode": StatusCode.SUCCESS, "userProxy": authority.exchange(claims, name, key)}


def get_token_key(svc, p: dict, claims, authority=None) -> Any:
    if authority is None:
        raise InvalidInput("the service runs in trusted mode: there are no token keys")
    name = limits.name("client_name", p.get("client_name")) or ""
    return {"StatusCode": StatusCode.SUCCESS, "tokenKey": authority.key_for(claims, name)[1]}


# -- calls the appliance does not provide: the answer shapes the pilot reads (pilot3 pilot/util/proxy.py,
# pilot/info/storagedata.py, pilot/util/activemq.py), never a bare 403/404 -----------------------------------------
RESOURCE_TYPES = [  # PanDA's resource types (JEDI resource_types table): cores and memory per core, MB
    {"resource_name": "SCORE", "mincore": None, "maxcore": 1, "minrampercore": None, "maxrampercore": 2000},
    {"resource_name": "MCORE", "mincore": 2, "maxcore": None, "minrampercore": None, "maxrampercore": 2000},
    {"resource_name": "SCORE_HIMEM", "mincore": None, "maxcore": 1, "minrampercore": 2001, "maxrampercore": None},
    {"resource_name": "MCORE_HIMEM", "mincore": 2, "maxcore": None, "minrampercore": 2001, "maxrampercore": None},
]


def get_resource_types(svc, p: dict, claims) -> Any:
    return {"StatusCode": StatusCode.SUCCESS, "ResourceTypes": RESOURCE_TYPES}


def get_proxy(svc, p: dict, claims) -> Any:
    """The pilot reads StatusCode and errorDialog (90: proxy error): there is no proxy cache here."""
    return {
        "StatusCode": StatusCode.PROXY_ERROR,
        "errorDialog": "proxies are not available from this service (harvester-edge has no "
        "proxy cache): give the pilot X509_USER_PROXY or a token",
    }


def get_key_pair(svc, p: dict, claims) -> Any:
    """The pilot reads StatusCode (80: key missing) and then publicKey/privateKey."""
    return {
        "StatusCode": StatusCode.MISSING_KEY,
        "errorDialog": f"key pair {str(p.get('publicKeyName'))[:100]}/"
        f"{str(p.get('privateKeyName'))[:100]} is not available: this service "
        f"keeps no object store keys",
    }


def get_user_secrets(svc, p: dict, claims) -> Any:
    """The pilot reads a JSON list [ok, secrets-or-message]: res[0] false means none."""
    return json.dumps([False, "user secrets are not available from this service"])


def set_debug_mode(svc, p: dict, claims) -> Any:
    """PanDA answers this user command in plain text, 'Succeeded' or 'ERROR: ...'."""
    return "ERROR: debug mode is not available: this service streams no payload stdout"


METHODS: dict[str, tuple[str, Callable]] = {
    "getJob": ("pilot", get_job),
    "updateJob": ("pilot", update_job),
    "updateJobsInBulk": ("pilot", update_jobs_in_bulk),
    "getStatus": ("pilot", get_status),
    "getEventRanges": ("event", get_event_ranges),
    "updateEventRanges": ("event", update_event_ranges),
    "updateWorkerPilotStatus": ("pilot", update_worker_pilot_status),
    "get_access_token": ("creds", get_access_token),
    "get_token_key": ("creds", get_token_key),
    "getResourceTypes": ("metaconfig", get_resource_types),
    "getProxy": ("pilot", get_proxy),
    "getKeyPair": ("pilot", get_key_pair),
    "get_user_secrets": ("pilot", get_user_secrets),
    "setDebugMode": ("pilot", set_debug_mode),
}
# Methods answered in JSON whatever the Accept header, as the real server does: the pilot parses the credential
# answers (get_access_token) with a JSON/Python literal parser and sends no Accept header there.
ALWAYS_JSON = frozenset({"get_access_token", "get_token_key", "getResourceTypes", "getProxy", "getKeyPair"})


_SUMMARY = "Legacy PanDA methods: " + ", ".join(sorted(METHODS)) + ", isAlive"


@router.get("/{method}", tags=["legacy"], summary=_SUMMARY, operation_id="legacy_get")
@router.post("/{method}", tags=["legacy"], summary=_SUMMARY, operation_id="legacy_post")
async def legacy_method(method: str, request: Request) -> Response:
    want_json = "application/json" in request.headers.get("accept", "")
    if method == "isAlive":
        return render({"alive": "yes"}, want_json)
    if method not in METHODS:
        return Response(f"method {method[:100]!r} is not exposed", status_code=403, media_type="text/plain")
    module, handler = METHODS[method]
    want_json = want_json or method in ALWAYS_JSON
    try:
        claims = authorize(request, module)
    except AuthError as exc:
        return refusal(exc, want_json)
    try:
        params = dict(request.query_params)
        params.update(parse_body(await request.body(), request.headers.get("content-type", "")))
        svc = request.app.state.service
        if module == "creds":
            answer = await run_in_threadpool(handler, svc, params, claims, request.app.state.authority)
        else:
            answer = await run_in_threadpool(handler, svc, params, claims)
    except AuthError as exc:
        return refusal(exc, want_json)
    except CentralError as exc:
        answer = {"StatusCode": exc.status_code, "ErrorDiag": str(exc), "errorDialog": str(exc)}
    return render(answer, want_json)


def refusal(exc: AuthError, want_json: bool) -> Response:
    """HTTP 403 (a failed token or a foreign job), in JSON {StatusCode 70, errorDialog} when JSON is expected."""
    if want_json:
        return Response(
            json.dumps({"StatusCode": exc.status_code, "errorDialog": str(exc)}),
            status_code=403,
            media_type="application/json",
        )
    return Response(str(exc), status_code=403, media_type="text/plain")
