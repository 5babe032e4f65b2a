"""The /api/v1/<module>/<method> dialect (Harvester 0.7+, pilot 3.14+): JSON in, envelope out.

The hot writes (HOT in hotpath.py) are normally answered by FastPath before FastAPI sees them; their routes
here document them in the OpenAPI spec and serve the app when it runs without the FastPath wrapper.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from . import limits, paylogs, v1_harvester
from .auth import authorize
from .errors import InvalidInput
from .hotpath import HOT, call_hot, dumps, json_list
from .models import (
    BIG,
    AcquireJobs,
    AcquireRanges,
    ErrorEdit,
    ErrorRule,
    Heartbeat,
    LogUpload,
    PilotStatus,
    RuleRef,
    TaskRef,
    TaskSet,
    UpdateJob,
    UpdateJobsBulk,
    UpdateRanges,
    UpdateWorkers,
    WorkerNode,
    WorkerNodeGpu,
    WorkShortage,
)
from .ownership import Caller, required_harvester
from .taskspec import TaskSpec

router = APIRouter()
MAX_FAILED_TASKS = 1000  # harvester/get_failed_tasks answers at most this many tasks per call


def ok(data: Any = None, message: str = "") -> Response:
    return Response(dumps({"success": True, "message": message, "data": data}), media_type="application/json")


def svc(request: Request):
    return request.app.state.service


async def hot(request: Request, name: str, body: Any) -> Response:
    entry = HOT[name]
    claims = authorize(request, entry.module)
    return ok(await call_hot(entry, svc(request), body, claims))


@router.post("/pilot/acquire_jobs", tags=["pilot"])
async def acquire_jobs(body: AcquireJobs, request: Request) -> Response:
    return await hot(request, "pilot/acquire_jobs", body)


@router.post("/pilot/update_job", tags=["pilot"])
async def update_job(body: UpdateJob, request: Request) -> Response:
    return await hot(request, "pilot/update_job", body)


@router.post("/pilot/update_jobs_bulk", tags=["pilot"])
async def update_jobs_bulk(body: UpdateJobsBulk, request: Request) -> Response:
    return await hot(request, "pilot/update_jobs_bulk", body)


@router.get("/pilot/get_job_status", tags=["pilot"])
async def get_job_status(request: Request, job_ids: list[str] = Query(max_length=100_000)) -> Response:
    """job_ids repeated (?job_ids=1&job_ids=2, as the real server reads them) or separated by commas/spaces;
    answer [{"job_id", "status", "attempt_number"}] like the real server ("not found" for an unknown id)."""
    authorize(request, "pilot")
    text = " ".join(job_ids)
    ids = text.replace(",", " ").split()
    if not ids or len(text) > 100_000 or not all(i.isdigit() and i.isascii() and len(i) < 19 for i in ids):
        raise InvalidInput(f"job_ids must be PandaIDs (repeated, or separated by commas or spaces), got {text[:80]!r}")
    rows = svc(request).job_status([int(i) for i in ids])
    return ok(
        [
            {
                "job_id": r["PandaID"],
                "status": "not found" if r["status"] == "notfound" else r["status"],
                "attempt_number": r["attemptNr"],
            }
            for r in rows
        ]
    )


@router.post("/pilot/update_worker_status", tags=["pilot"])
def update_worker_status(body: PilotStatus, request: Request) -> Response:
    """The real server's path (worker_id, harvester_id, status, node_id)."""
    caller = Caller(authorize(request, "pilot"), body.harvester_id)
    svc(request).update_worker_pilot_status(
        body.harvester_id, str(body.worker_id), body.status, body.site, body.node_id, caller=caller
    )
    return ok(True)


@router.post("/pilot/update_worker_pilot_status", tags=["pilot"])
def update_worker_pilot_status(body: PilotStatus, request: Request) -> Response:
    """Older name of pilot/update_worker_status, kept for clients that still use it."""
    return update_worker_status(body, request)


@router.post("/pilot/update_worker_node", tags=["pilot"])
def update_worker_node(body: WorkerNode, request: Request) -> Response:
    authorize(request, "pilot")
    svc(request).update_worker_node(body.model_dump(exclude_none=True))
    return ok(None, "worker node updated")


@router.post("/pilot/update_worker_node_gpu", tags=["pilot"])
def update_worker_node_gpu(body: WorkerNodeGpu, request: Request) -> Response:
    authorize(request, "pilot")
    svc(request).update_worker_node(body.model_dump(exclude_none=True), gpu=True)
    return ok(None, "worker node GPU updated")


@router.post("/event/acquire_event_ranges", tags=["event"])
async def acquire_event_ranges(body: AcquireRanges, request: Request) -> Response:
    return await hot(request, "event/acquire_event_ranges", body)


@router.post("/event/update_event_ranges", tags=["event"])
async def update_event_ranges(body: UpdateRanges, request: Request) -> Response:
    return await hot(request, "event/update_event_ranges", body)


@router.get("/event/get_available_event_range_count", tags=["event"])
def get_available_event_range_count(
    request: Request,  # a count over the ready index: off the event loop
    task_id: int | None = Query(None, ge=0, le=BIG),
    job_id: int | None = Query(None, ge=0, le=BIG),
    jobset_id: int | None = Query(None, ge=0, le=BIG),
) -> Response:
    """The real server takes job_id, jobset_id and task_id; ranges are task-wide here (jumbo), so the task counts."""
    authorize(request, "event")
    return ok(svc(request).available_range_count(task_id, job_id))


@router.post("/harvester/heartbeat", tags=["harvester"])
def heartbeat(body: Heartbeat, request: Request) -> Response:
    caller = Caller(authorize(request, "harvester"), body.harvester_id)
    svc(request).heartbeat(body.harvester_id, body.data, caller=caller)
    return ok(True)


@router.post("/harvester/update_workers", tags=["harvester"])
def update_workers(body: UpdateWorkers, request: Request) -> Response:
    caller = Caller(authorize(request, "harvester"), body.harvester_id)
    workers = json_list(body.workers, "workers")  # Harvester's communicator sends json.dumps(list)
    return ok(svc(request).update_workers(body.harvester_id, workers, caller=caller))


@router.post("/harvester/acquire_commands", tags=["harvester"])
def acquire_commands(request: Request) -> Response:
    authorize(request, "harvester")
    return ok([])  # commands to harvesters are not used by the embedded service


@router.post("/harvester/acknowledge_commands", tags=["harvester"])
def acknowledge_commands(request: Request) -> Response:
    authorize(request, "harvester")
    return ok(True)


@router.post("/harvester/report_worker_statistics", tags=["harvester"])
def report_worker_statistics(request: Request) -> Response:
    authorize(request, "harvester")
    return ok(True)


@router.get("/creds/get_access_token", tags=["creds"])
def get_access_token(
    request: Request, client_name: str = Query(max_length=200), token_key: str = Query(max_length=200)
) -> Response:
    claims = authorize(request, "creds")
    authority = request.app.state.authority
    if authority is None:
        raise InvalidInput("the service runs in trusted mode: there are no tokens to get")
    return ok({"user_proxy": authority.exchange(claims, client_name, token_key)})  # the real server's shape


@router.get("/creds/get_token_key", tags=["creds"])
def get_token_key(request: Request, client_name: str = Query(max_length=200)) -> Response:
    claims = authorize(request, "creds")
    authority = request.app.state.authority
    if authority is None:
        raise InvalidInput("the service runs in trusted mode: there are no token keys")
    # who may mint for which name: tokens.key_for; {"tokenKey": ...} as the real server answers
    return ok({"tokenKey": authority.key_for(claims, client_name)[1]})


@router.get("/system/is_alive", tags=["system"])
async def is_alive() -> Response:
    return ok(None)  # the real server: success=true, data null


@router.get("/metaconfig/get_resource_types", tags=["metaconfig"])
async def get_resource_types(request: Request) -> Response:
    authorize(request, "metaconfig")
    return ok([{"resource_name": "MCORE", "mincore": 1, "maxcore": None, "minrampercore": None, "maxrampercore": None}])


@router.post("/task/submit", tags=["task"])
def task_submit(body: TaskSpec, request: Request) -> Response:
    authorize(request, "task")
    return ok({"task_id": svc(request).submit_task(body)})


@router.get("/task/list", tags=["task"])
def task_list(request: Request) -> Response:
    authorize(request, "task")
    return ok(svc(request).list_tasks())


@router.get("/task/show", tags=["task"])
def task_show(request: Request, task_id: int = Query(ge=0, le=BIG)) -> Response:
    authorize(request, "task")
    return ok(svc(request).show_task(task_id))


@router.post("/task/kill", tags=["task"])
def task_kill(body: TaskRef, request: Request) -> Response:
    authorize(request, "task")
    return ok({"task_id": body.task_id, "status": svc(request).kill_task(body.task_id)})


@router.post("/task/retry", tags=["task"])
def task_retry(body: TaskRef, request: Request) -> Response:
    authorize(request, "task")
    return ok({"task_id": body.task_id, "status": svc(request).retry_task(body.task_id)})


def who(claims: dict[str, Any] | None) -> str:
    """Who makes a change, for the records: the token's subject ('trusted' in trusted mode)."""
    return str(claims.get("sub") or "?")[:200] if claims else "trusted"


@router.post("/task/set", tags=["task"])
def task_set(body: TaskSet, request: Request) -> Response:
    claims = authorize(request, "task")
    service = svc(request)
    return ok(service.set_task_dispatch(body.task_id, body.priority, body.share, body.clear_share, who(claims)))


@router.get("/errors/list", tags=["errors"])
def errors_list(request: Request, status: str | None = Query(None, max_length=32)) -> Response:
    authorize(request, "errors")
    return ok(svc(request).list_errors(status))


@router.get("/errors/suggest", tags=["errors"])
def errors_suggest(request: Request, panda_id: int = Query(ge=0, le=BIG)) -> Response:
    authorize(request, "errors")
    return ok(svc(request).suggest_error_rule(panda_id))


@router.get("/errors/history", tags=["errors"])
def errors_history(request: Request, rule_id: int | None = Query(None, ge=0, le=BIG)) -> Response:
    authorize(request, "errors")
    return ok(svc(request).error_history(rule_id))


@router.post("/errors/add", tags=["errors"])
def errors_add(body: ErrorRule, request: Request) -> Response:
    claims = authorize(request, "errors")
    service = svc(request)
    rule_id = service.add_error_rule(
        body.source, body.code, body.diag_pattern, body.error_class, body.status, who(claims)
    )
    return ok({"id": rule_id})


@router.post("/errors/edit", tags=["errors"])
def errors_edit(body: ErrorEdit, request: Request) -> Response:
    claims = authorize(request, "errors")
    changes = {
        "source": body.source,
        "code": body.code,
        "diag_pattern": body.diag_pattern,
        "class": body.error_class,
        "status": body.status,
    }
    return ok(svc(request).edit_error_rule(body.id, changes, who(claims)))


@router.post("/errors/delete", tags=["errors"])
def errors_delete(body: RuleRef, request: Request) -> Response:
    claims = authorize(request, "errors")
    return ok(svc(request).delete_error_rule(body.id, who(claims)))


@router.get("/harvester/get_work_shortage", tags=["harvester"])
def get_work_shortage(request: Request) -> Response:
    authorize(request, "harvester")
    return ok(svc(request).work_shortage())


@router.get("/harvester/get_failed_tasks", tags=["harvester"])
def get_failed_tasks(
    request: Request,
    harvester_id: str = Query(min_length=1, max_length=limits.MAX_NAME),
    since: float = Query(0.0, ge=0, le=BIG),
    limit: int = Query(100, ge=1, le=MAX_FAILED_TASKS),
) -> Response:
    name = limits.name("harvester_id", harvester_id, required=True)
    harvester = required_harvester(Caller(authorize(request, "harvester"), name), name)
    return ok(svc(request).failed_tasks_of(harvester, since, limit))


@router.post("/task/set_work_shortage", tags=["task"])
def set_work_shortage(body: WorkShortage, request: Request) -> Response:
    authorize(request, "task")
    return ok(svc(request).set_work_shortage(body.mode))


@router.post("/logs/upload", tags=["logs"])
def logs_upload(body: LogUpload, request: Request) -> Response:
    claims = authorize(request, "harvester")
    records = [r.model_dump() for r in body.records]
    caller = Caller(claims, body.harvester_id)
    return ok(svc(request).upload_payload_logs(body.harvester_id, body.source, records, caller))


def log_filter(
    task_id: int | None = Query(None, ge=0, le=BIG),
    panda_id: int | None = Query(None, ge=0, le=BIG),
    rank: int | None = Query(None, ge=0, le=paylogs.MAX_RANK),
    stream: str | None = Query(None, pattern="^(" + "|".join(paylogs.STREAMS) + ")$"),
    grep: str | None = Query(None, max_length=paylogs.MAX_GREP),
    after: int = Query(0, ge=0, le=BIG),
    limit: int = Query(1000, ge=1, le=paylogs.MAX_LIMIT),
) -> paylogs.LogFilter:
    """logs/list's query parameters as the one LogFilter that travels to the SQL."""
    return paylogs.LogFilter(task_id, panda_id, rank, stream, grep, after, limit)


@router.get("/logs/list", tags=["logs"])
def logs_list(request: Request, flt: paylogs.LogFilter = Depends(log_filter)) -> Response:
    authorize(request, "task")
    return ok(svc(request).payload_logs(flt))


router.include_router(v1_harvester.router)  # the other calls of Harvester's communicator (v1_harvester.py)
router.add_api_route(
    "/credential/get_token_key",
    get_token_key,
    methods=["GET"],
    tags=["creds"],
    deprecated=True,
    operation_id="alias_credential_get_token_key",
    **v1_harvester.alias_doc("/credential/get_token_key", "/creds/get_token_key"),
)  # Harvester's name of the call
