"""/api/v1 calls a real Harvester makes that the core of v1.py does not serve: job status, dialogs, service
metrics, worker ids and statistics, key pairs and proxies, JEDI logs.

Each answers in the shape the PanDA server builds (pandaserver/api/v1/{job,harvester,credential_management,
file_server}_api.py, panda-server 1.0.4) and Harvester's communicator reads (HSF/harvester,
pandaharvester/harvestercommunicator/panda_communicator.py, the /api/v1 version with request_ssl); the contract
test tests/contract/test_harvester_communicator.py sends each call as that communicator does.

How that communicator sends (request_ssl):
- POST: `json=data`: a JSON object body.
- GET: `data=data` with its fixed header Content-Type: application/json: requests puts the parameters
  FORM-ENCODED IN THE BODY (a list as a repeated key), not in the query string; gate.get_parameters makes such a
  body the query string, which the routes read as the PanDA server does (a repeated key is a list).
- UPLOAD: `files={"file": (name, bytes)}` with the same fixed Content-Type: application/json, so the multipart
  body arrives without its boundary in the header; `upload()` takes the boundary from the body's first line.
Where the appliance has no such thing (x509 proxies, key pairs) the answer is PanDA's refusal: success=false and a
message saying so, as the real server answers a caller it cannot serve.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from . import jedilogs, limits
from .apidoc import v1_entry, v1doc
from .auth import authorize
from .bodies import DEFAULT_MAX_BODY, parse_json
from .errors import InvalidInput
from .hotpath import dumps, json_list
from .models import Body as Model
from .ownership import Caller, required_harvester
from .states import JOB_TERMINAL
from .store import harvesters
from .store import jobs as job_rows

log = logging.getLogger(__name__)
router = APIRouter()
WORKER_STATS_WINDOW = 4 * 3600  # PanDA counts workers updated in the last 4 hours (DBProxy.getWorkerStats)
Text = Annotated[str | None, Query(max_length=limits.MAX_NAME)]


def answer(success: bool, message: str = "", data: Any = None) -> Response:
    return Response(dumps({"success": success, "message": message, "data": data}), media_type="application/json")


def panda_ids(value: Any) -> list[int]:
    """job_ids as PanDA takes them: repeated, a list, or (leniently) one string of ids split by commas/spaces."""
    items = value if isinstance(value, list) else [value]
    ids: list[str] = []
    for item in items:
        ids.extend(str(item).replace(",", " ").split() if isinstance(item, str) else [str(item)])
    if not ids or len(ids) > 10_000 or not all(i.isascii() and i.isdigit() and len(i) < 19 for i in ids):
        raise InvalidInput(f"job_ids must be PandaIDs (repeat job_ids=N, or a list), got {str(value)[:80]!r}")
    return [int(i) for i in ids]


# -- job ---------------------------------------------------------------------------------------------------
@router.get(
    "/job/get_status",
    tags=["job"],
    **v1doc(
        "job",
        "Status and pilot command of jobs",
        "Harvester's check_jobs (communicator: GET job/get_status, job_ids). One entry per asked id, in order; an "
        "unknown id is {status: unknown, command: tobekilled}, as the PanDA server answers (DBProxy.checkJobStatus).",
        "a list of {status, command} (command null when there is none).",
    ),
)
async def job_get_status(
    request: Request,
    job_ids: Annotated[list[str], Query(description="PandaIDs: repeat the parameter (job_ids=1&job_ids=2)")],
) -> Response:
    authorize(request, "job")
    ids = panda_ids(job_ids)
    svc = request.app.state.service

    def read() -> list[dict]:
        conn = svc.db.reader()
        out: list[dict[str, str | None]] = []
        for pid in ids:
            row = job_rows.command_of(conn, pid)
            if row is None:
                out.append({"status": "unknown", "command": "tobekilled"})
            else:
                out.append({"status": row[0], "command": None if row[1] in (None, "", "NULL") else row[1]})
        return out

    return answer(True, data=await run_in_threadpool(read))


# -- harvester -----------------------------------------------------------------------------------------------
class Dialogs(Model):
    harvester_id: str = Field(min_length=1, max_length=limits.MAX_NAME)
    dialogs: list[dict] | str = Field(
        description="[{diagID, moduleName, identifier, creationTime, messageLevel, diagMessage}, ...] (or its JSON)"
    )


class ServiceMetrics(Model):
    harvester_id: str = Field(min_length=1, max_length=limits.MAX_NAME)
    metrics: list | str = Field(
        description='[[creation_time "%Y-%m-%d %H:%M:%S.%f", host, metrics as a JSON string], ...] (or its JSON)'
    )


MAX_DIALOGS = 1000


@router.post(
    "/harvester/add_dialogs",
    tags=["harvester"],
    **v1doc(
        "harvester",
        "Dialog messages of a harvester",
        "Harvester's send_dialog_messages. The messages are checked and written to this service's log (level of "
        "messageLevel); at most 1000 per call.",
        "null.",
        body=True,
    ),
)
def add_dialogs(body: Dialogs, request: Request) -> Response:
    caller = Caller(authorize(request, "harvester"), body.harvester_id)
    harvester = required_harvester(caller, limits.name("harvester_id", body.harvester_id, required=True))
    dialogs = json_list(body.dialogs, "dialogs")
    if len(dialogs) > MAX_DIALOGS or not all(isinstance(d, dict) for d in dialogs):
        raise InvalidInput(f"dialogs must be a list of at most {MAX_DIALOGS} objects")
    for d in dialogs:
        level = getattr(logging, str(d.get("messageLevel", "INFO")).upper()[:10], logging.INFO)
        log.log(
            level if isinstance(level, int) else logging.INFO,
            "harvester %s dialog %s %s: %s",
            harvester,
            limits.diag(d.get("moduleName"))[:80],
            limits.diag(d.get("identifier"))[:80],
            limits.diag(d.get("diagMessage")),
        )
    return answer(True)


@router.post(
    "/harvester/update_service_metrics",
    tags=["harvester"],
    **v1doc(
        "harvester",
        "Service metrics of a harvester",
        "Harvester's update_service_metrics: [[creation_time, host, metrics JSON], ...]. Checked as the PanDA server "
        "reads them (the time as %Y-%m-%d %H:%M:%S.%f, the metrics a JSON object); the newest entry is kept with the "
        "harvester's heartbeat attributes (key service_metrics).",
        "[true] (as the PanDA server).",
        body=True,
    ),
)
def update_service_metrics(body: ServiceMetrics, request: Request) -> Response:
    caller = Caller(authorize(request, "harvester"), body.harvester_id)
    harvester = required_harvester(caller, limits.name("harvester_id", body.harvester_id, required=True))
    entries = json_list(body.metrics, "metrics")
    latest = None
    for i, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 3 or not all(isinstance(x, str) for x in entry):
            raise InvalidInput(f"metrics[{i}] must be [creation_time, host, metrics JSON], got {entry!r:.120}")
        try:
            when = time.strptime(entry[0], "%Y-%m-%d %H:%M:%S.%f")
        except ValueError as exc:
            raise InvalidInput(f"metrics[{i}] time {entry[0]!r:.40} is not %Y-%m-%d %H:%M:%S.%f") from exc
        values = parse_json(entry[2], f"metrics[{i}] metrics")
        if not isinstance(values, dict):
            raise InvalidInput(f"metrics[{i}] metrics must be a JSON object")
        if latest is None or when >= latest[0]:
            latest = (when, {"time": entry[0], "host": limits.name("host", entry[1]), "metrics": values})
    if latest is not None:
        text = limits.attrs("service metrics", latest[1])
        request.app.state.service.db.write(lambda c: harvesters.service_metrics(c, harvester, text))
    return answer(True, data=[True])


@router.get(
    "/harvester/get_current_worker_id",
    tags=["harvester"],
    **v1doc(
        "harvester",
        "Largest worker id this service has for a harvester",
        "Harvester's get_max_worker_id: the largest numeric workerID reported with update_workers or "
        "update_worker_pilot_status for harvester_id (0 when there is none).",
        "an integer.",
    ),
)
async def get_current_worker_id(
    request: Request, harvester_id: Annotated[str, Query(min_length=1, max_length=limits.MAX_NAME)]
) -> Response:
    name = limits.name("harvester_id", harvester_id, required=True)
    harvester = required_harvester(Caller(authorize(request, "harvester"), name), name)
    svc = request.app.state.service

    def read() -> int:
        return harvesters.max_worker_id(svc.db.reader(), harvester)

    return answer(True, data=await run_in_threadpool(read))


@router.get(
    "/harvester/get_worker_statistics",
    tags=["harvester"],
    **v1doc(
        "harvester",
        "Workers by site, harvester, job type, resource type and state",
        "Harvester's get_worker_stats_from_panda: counts of the workers updated in the last 4 hours, "
        "{site: {harvester_id: {jobType: {resourceType: {status: n}}}}} as DBProxy.getWorkerStats builds it "
        "(jobType and resourceType from the workers' reported attributes, 'ANY' when missing).",
        "the nested counts above.",
    ),
)
async def get_worker_statistics(request: Request) -> Response:
    authorize(request, "harvester")
    svc = request.app.state.service
    since = svc.clock() - WORKER_STATS_WINDOW

    def read() -> dict:
        rows = harvesters.worker_counts(svc.db.reader(), since)
        stats: dict = {}
        for site, harvester, job_type, resource, status, n in rows:
            stats.setdefault(site, {}).setdefault(harvester, {}).setdefault(str(job_type), {}).setdefault(
                str(resource), {}
            )[status] = n
        return stats

    return answer(True, data=await run_in_threadpool(read))


# -- creds ---------------------------------------------------------------------------------------------------
@router.get(
    "/creds/get_key_pair",
    tags=["creds"],
    **v1doc(
        "creds",
        "Key pair (not provided here)",
        "Harvester's get_key_pair. The PanDA server hands key pairs from its configuration to DNs allowed 'k' in "
        "USERS.GRIDPREF; this service keeps no key pairs, so it always answers success=false saying so.",
        "never (success is always false).",
    ),
)
async def get_key_pair(request: Request, public_key_name: Text = None, private_key_name: Text = None) -> Response:
    authorize(request, "creds")
    return answer(
        False,
        f"key pairs are not provided here: the harvester-edge central service keeps no key pairs "
        f"(asked for {public_key_name!r}/{private_key_name!r})",
    )


@router.get(
    "/creds/get_proxy",
    tags=["creds"],
    **v1doc(
        "creds",
        "x509 proxy (not provided here)",
        "Harvester's get_proxy. The PanDA server hands out cached x509 proxies; this service holds none (its "
        "credentials are tokens: creds/get_token_key, creds/get_access_token), so it always answers success=false.",
        "never (success is always false).",
    ),
)
async def get_proxy(request: Request, role: Text = None, dn: Text = None) -> Response:
    authorize(request, "creds")
    return answer(
        False,
        "x509 proxies are not provided here: the harvester-edge central service holds no proxies; "
        "its credentials are tokens (creds/get_token_key, creds/get_access_token)",
    )


# -- file_server ---------------------------------------------------------------------------------------------
_FILE_FORM = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "the log; its file name names it"}
                },
            }
        }
    },
    "required": True,
}


def multipart_file(body: bytes, content_type: str) -> tuple[str | None, bytes]:
    """(file name, content) of the part named "file" of a multipart/form-data body.

    The boundary comes from the Content-Type, or (Harvester's request_ssl sends its uploads labelled
    application/json, see the module doc) from the body's first line."""
    match = re.search(r'boundary="?([^";,\s]+)"?', content_type) if content_type.startswith("multipart/") else None
    if match:
        boundary = match.group(1).encode()
    elif body.startswith(b"--") and b"\r\n" in body[:200]:
        boundary = body[2 : body.index(b"\r\n")]
    else:
        raise InvalidInput("expected a multipart/form-data body with a part named 'file'")
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = re.search(rb"(?im)^content-disposition:[^\r\n]*", head)
        name = re.search(rb';\s*name="([^"]*)"', disposition.group(0)) if disposition else None
        if sep and disposition and name and name.group(1) == b"file":
            filename = re.search(rb';\s*filename="([^"]*)"', disposition.group(0))
            return (filename.group(1).decode("utf-8", "replace") if filename else None), content.removesuffix(b"\r\n")
    raise InvalidInput("the multipart body has no part named 'file'")


async def uploaded(request: Request) -> tuple[str | None, bytes, int]:
    cap = getattr(request.app.state.settings, "max_body", DEFAULT_MAX_BODY)
    name, content = multipart_file(await request.body(), request.headers.get("content-type", ""))
    return name, content, cap


@router.post(
    "/file_server/upload_jedi_log",
    tags=["file_server"],
    **v1doc(
        "file_server",
        "Upload a log file (replaces one of the same name)",
        "PanDA's upload_jedi_log: the multipart part 'file' is stored under the service's work dir (jedilog/<name>, "
        "name = the file name after its last '/': letters, digits, '.', '_', '-' only), at most central.max_body "
        "bytes; a log of the same name is replaced. The monitor's job page links the logs whose name holds the job's "
        "PandaID or task id.",
        "the URL of the log in the monitor.",
        body=True,
        request_body=_FILE_FORM,
    ),
)
async def upload_jedi_log(request: Request) -> Response:
    authorize(request, "file_server")
    filename, content, cap = await uploaded(request)
    name = await run_in_threadpool(jedilogs.store, request.app.state.service.db.path, filename, content, cap)
    log.info("log %s uploaded (%d bytes)", name, len(content))
    return answer(True, data=f"{str(request.base_url).rstrip('/')}/monitor/jedilog/{name}")


@router.post(
    "/file_server/update_jedi_log",
    tags=["file_server"],
    **v1doc(
        "file_server",
        "Append a zlib-compressed chunk to a log file",
        "PanDA's update_jedi_log, what Harvester's upload_file sends: the part 'file' is zlib data, inflated (capped) "
        "and appended to jedilog/<name>; the log stays at most central.max_body bytes.",
        "null.",
        body=True,
        request_body=_FILE_FORM,
    ),
)
async def update_jedi_log(request: Request) -> Response:
    authorize(request, "file_server")
    filename, content, cap = await uploaded(request)
    await run_in_threadpool(jedilogs.append, request.app.state.service.db.path, filename, content, cap)
    return answer(True)


# -- statistics ----------------------------------------------------------------------------------------------
ACTIVE_REPORTED = ("assigned", "activated", "running")  # always present, as DBProxy.getJobStatistics does


@router.get(
    "/statistics/active_job_stats_by_site",
    tags=["statistics"],
    **v1doc(
        "statistics",
        "Active jobs by site and state",
        "Harvester's get_job_stats: jobs not in a final state, {site: {jobStatus: n}} with assigned, activated and "
        "running always present (as DBProxy.getJobStatistics).",
        "the counts above.",
    ),
)
async def active_job_stats_by_site(request: Request) -> Response:
    authorize(request, "statistics")
    svc = request.app.state.service

    def read() -> dict:
        rows = job_rows.active_by_site(svc.db.reader(), tuple(s.value for s in JOB_TERMINAL))
        stats: dict = {}
        for site, status, n in rows:
            stats.setdefault(site, dict.fromkeys(ACTIVE_REPORTED, 0))[status] = n
        return stats

    return answer(True, data=await run_in_threadpool(read))


# -- the module names of Harvester's communicator -------------------------------------------------------------
# Its /api/v1 version (request_ssl) calls credential/get_proxy, credential/get_key_pair, credential/get_token_key
# and file/update_jedi_log where the PanDA server (1.0.4, pandaserver/server/panda.py module_mapping) has creds/
# and file_server/. Both names are served; the communicator's are marked deprecated in the docs.
def alias_doc(path: str, target: str) -> dict[str, Any]:
    """Docs of `path`, another name of the call documented at `target` (apidoc: v1.py's routes; or this module's)."""
    entry = v1_entry("/api/v1" + target)
    if entry is None:
        route = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == target)
        entry = {
            "summary": route.summary,
            "description": route.description,
            "responses": route.responses,
            "openapi_extra": route.openapi_extra,
        }
    return {
        **entry,
        "summary": entry["summary"] + " (alias)",
        "description": f"The same call as /api/v1{target}; Harvester's communicator names it /api/v1{path}."
        f"\n\n{entry['description']}",
    }


def _alias(path: str, endpoint, method: str, target: str) -> None:
    router.add_api_route(
        path,
        endpoint,
        methods=[method],
        deprecated=True,
        operation_id=f"alias_{path.strip('/').replace('/', '_')}",
        tags=next(r.tags for r in router.routes if isinstance(r, APIRoute) and r.path == target),
        **alias_doc(path, target),
    )


_alias("/credential/get_key_pair", get_key_pair, "GET", "/creds/get_key_pair")
_alias("/credential/get_proxy", get_proxy, "GET", "/creds/get_proxy")
_alias("/file/update_jedi_log", update_jedi_log, "POST", "/file_server/update_jedi_log")
