"""What the OpenAPI spec (/openapi.json, read at /docs) says about each route: summary, description, the token scope
it needs, request and response schemas and its error answers.

v1 routes pass `v1doc(...)` to their decorator. The legacy dialect is one FastAPI route (/server/panda/{method});
`complete(spec)` replaces it with one documented path per method, and documents the monitor and /metrics routes
(their modules stay free of OpenAPI detail). tests/central/test_openapi.py fails on a route left undocumented.

How this service answers errors (what the spec states, per dialect):
- /api/v1: a missing, bad or too weak token, or acting for another harvester: HTTP 403 with the envelope; a body
  over central.max_body: HTTP 413 with the envelope; invalid input or a refused change: HTTP 200 with
  success=false and the reason in message (PanDA's convention: clients read `success`). FastAPI's generic 422
  is never sent by /api/v1 routes and is removed from their docs.
- /server/panda: 403 (token), 405 (GET on a method that changes state), 413 (body); refusals otherwise are
  StatusCode != 0 in the urlencoded (or JSON) answer.
- monitor: 403 (token), 404 (no such task/job/worker/file), 400 (refused), 422 (a path or query parameter of
  the wrong type or range, plain text); /metrics: 403.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .auth import MODULE_SCOPES
from .guard import LEGACY_READS

LEGACY_GETS = LEGACY_READS | {"get_access_token", "get_token_key"}  # guard.py: the legacy methods GET may call

SCOPE_KEY = "x-required-scope"


class Envelope(BaseModel):
    """Every /api/v1 answer."""

    success: bool = Field(description="true when the call did what it was asked")
    message: str = Field("", description="why not, when success is false")
    data: Any = Field(None, description="the answer; its shape is given in each call's description")


def scopes(module: str | None) -> list[str]:
    """Token scopes that may call a v1 module (auth.MODULE_SCOPES); [] = no token needed."""
    return [] if module is None else sorted(MODULE_SCOPES.get(module, {"admin"}))


def scope_text(names: list[str]) -> str:
    if not names:
        return "no token needed"
    return "a token with scope " + " or ".join(names) + " (none in trusted mode)"


ERRORS = {
    403: "Forbidden: no token, a bad or expired one, a scope that may not call this, acting for another harvester "
    "or a job it does not own, or (trusted mode) a peer that is not trusted; also a Host or Origin the "
    "service refuses. Envelope with success=false.",
    404: "Not found.",
    413: "Request body larger than central.max_body (as sent or once gzip is inflated). Envelope with success=false.",
    415: "A browser-sent (Origin: scheme://host) /api/v1 POST that is not Content-Type: application/json.",
}


def v1doc(
    module: str | None, summary: str, description: str, data: str, body: bool = False, request_body: dict | None = None
) -> dict[str, Any]:
    """Decorator keyword arguments documenting a /api/v1 route: `data` describes the envelope's data on success,
    `body` says it reads a request body, `request_body` documents one FastAPI does not see (an upload)."""
    names = scopes(module)
    responses: dict[int | str, Any] = {
        200: {
            "model": Envelope,
            "description": f"Envelope. On success data is {data} Invalid input or a refused "
            "change: success=false, message says why (HTTP 200, as PanDA).",
        }
    }
    if names:
        responses[403] = {"model": Envelope, "description": ERRORS[403]}
    if body:
        responses[413] = {"model": Envelope, "description": ERRORS[413]}
        responses[415] = {"model": Envelope, "description": ERRORS[415]}
    extra: dict[str, Any] = {SCOPE_KEY: names}
    if request_body is not None:
        extra["requestBody"] = request_body
    return {
        "summary": summary,
        "description": f"{description}\n\nScope: {scope_text(names)}.",
        "responses": responses,
        "openapi_extra": extra,
    }


# -- the legacy dialect: one path per method ------------------------------------------------------------------
_LEGACY = {  # method: (module, summary, parameters, answer)
    "getJob": (
        "pilot",
        "Get a job (or nJobs jobs)",
        "siteName, node, computingElement, prodSourceLabel, nJobs, "
        "harvester_id, worker_id, schedulerID, resourceType, jobType; brokerage: mem (MB per rank), memMin, "
        "coreCount (cores per rank)",
        "a flat job description and "
        "StatusCode=0 (nSent); with nJobs {StatusCode, jobs}; StatusCode=20 when there is no job",
    ),
    "updateJob": (
        "pilot",
        "Report a job's state",
        "jobId, state, transExitCode, pilotErrorCode, pilotErrorDiag, "
        "exeErrorCode, exeErrorDiag, node, nEvents, attemptNr, coreCount, startTime, endTime, ...",
        "StatusCode and command (NULL or tobekilled)",
    ),
    "updateJobsInBulk": (
        "pilot",
        "Report the states of several jobs",
        "jobList (JSON list of updateJob parameters), harvester_id",
        "JSON [true, [{StatusCode, command | ErrorDiag}, ...]]",
    ),
    "getStatus": (
        "pilot",
        "Status of jobs",
        "ids (PandaIDs separated by spaces or commas)",
        "StatusCode, status and attemptNr (one per job, joined with '+')",
    ),
    "getEventRanges": (
        "event",
        "Get event ranges for a job",
        "pandaID, jobsetID, taskID, nRanges",
        "StatusCode and eventRanges (list of {eventRangeID, startEvent, lastEvent, LFN, GUID, scope})",
    ),
    "updateEventRanges": (
        "event",
        "Report event ranges",
        "eventRanges (JSON list), version (0 or 1)",
        "StatusCode, Returns (one boolean per report) and Command",
    ),
    "updateWorkerPilotStatus": (
        "pilot",
        "A worker's pilot started or finished",
        "harvesterID, workerID, status (started | finished), site, node_id",
        "StatusCode",
    ),
    "get_access_token": (
        "creds",
        "Exchange a token key for a short-lived token",
        "client_name, token_key",
        "StatusCode and userProxy (the new token); also with GET",
    ),
    "get_token_key": (
        "creds",
        "Get a token key for a client name",
        "client_name",
        "StatusCode and tokenKey; also with GET",
    ),
    "isAlive": (None, "Is the service up", "none", "alive=yes"),
    "getResourceTypes": (
        "metaconfig",
        "Resource types",
        "none",
        "JSON: StatusCode 0 and ResourceTypes (name, min/max cores, memory per core); also with GET",
    ),
    "getProxy": (
        "pilot",
        "Get an X509 proxy",
        "role, dn",
        "JSON: StatusCode 90 and errorDialog: this service keeps no proxy cache",
    ),
    "getKeyPair": (
        "pilot",
        "Get an object store key pair",
        "publicKeyName, privateKeyName",
        "JSON: StatusCode 80 and errorDialog: this service keeps no object store keys",
    ),
    "get_user_secrets": (
        "pilot",
        "Get the user's secrets",
        "none",
        "JSON list [false, message]: this service keeps no user secrets",
    ),
    "setDebugMode": (
        "pilot",
        "Stream a job's payload stdout",
        "pandaID, modeOn",
        "text 'ERROR: ...': this service streams no payload stdout",
    ),
}

_LEGACY_DESCRIPTION = (
    "Legacy PanDA dialect (pilot 3.11). Parameters: {params}. They come form-encoded (POST body or query string) "
    "or as a JSON object (Content-Type: application/json; a gzip body is inflated even without "
    "Content-Encoding). Answer: {answer}; urlencoded unless Accept asks for application/json. Refusals are "
    "StatusCode != 0 (50 invalid, 30 failed, 70 denied) with ErrorDiag."
)


def _legacy_operation(name: str, method: str) -> dict[str, Any]:
    module, summary, params, answer = _LEGACY[name]
    names = scopes(module)
    form = {"type": "object", "additionalProperties": True, "description": f"parameters: {params}"}
    operation: dict[str, Any] = {
        "tags": ["legacy"],
        "summary": f"{name}: {summary}",
        "operationId": f"legacy_{name}_{method}",
        "description": _LEGACY_DESCRIPTION.format(params=params, answer=answer) + f"\n\nScope: {scope_text(names)}.",
        SCOPE_KEY: names,
        "responses": {
            "200": {
                "description": answer,
                "content": {
                    "text/plain": {"schema": {"type": "string", "description": "urlencoded answer"}},
                    "application/json": {"schema": {"type": "object", "additionalProperties": True}},
                },
            }
        },
    }
    if method == "post":
        operation["requestBody"] = {
            "content": {"application/x-www-form-urlencoded": {"schema": form}, "application/json": {"schema": form}}
        }
        operation["responses"]["413"] = {"description": "Request body larger than central.max_body (plain text)."}
    else:
        operation["parameters"] = [
            {"name": "parameters", "in": "query", "required": False, "schema": form, "style": "form", "explode": True}
        ]
        if name not in LEGACY_GETS:
            operation["responses"]["405"] = {"description": "This method changes state: send it with POST."}
    if names:
        operation["responses"]["403"] = {
            "description": "No token, a bad one or a scope that may not call it (plain text)."
        }
    return operation


# -- monitor and metrics -------------------------------------------------------------------------------------
_MONITOR = {  # path: (description, errors beyond 403)
    "/monitor/": ("The dashboard: tasks, jobs, workers, recent errors; refreshes itself (?refresh=seconds).", {}),
    "/monitor/task/{task_id}": (
        "One task: its ranges by state, jobs and attempts.",
        {404: "No such task (HTML page)."},
    ),
    "/monitor/job/{panda_id}": (
        "One job: its state, workers, ranges, job report and the logs uploaded for it (file_server/upload_jedi_log).",
        {404: "No such job (HTML page)."},
    ),
    "/monitor/job/{panda_id}/log": (
        "A job's log tarball, as its PanDA pilot staged it out into "
        "central.pilot_log_dir (read without following links, size-capped).",
        {404: "No such job, or no tarball under central.pilot_log_dir (HTML page)."},
    ),
    "/monitor/jedilog/{name}": (
        "A log uploaded with file_server/upload_jedi_log (or appended with update_jedi_log), shown as text.",
        {404: "No such log (HTML page)."},
    ),
    "/monitor/worker/{worker_id}": (
        "One worker: its batch job, state history and jobs.",
        {404: "No such worker (HTML page)."},
    ),
    "/monitor/worker/{worker_id}/file": (
        "A log, script or stdout/stderr file of a worker's access point "
        "(?name=...), read safely (no links, size-capped).",
        {404: "No such worker or file (HTML page)."},
    ),
    "/monitor/worker/{worker_id}/archive": (
        "The archive (tar.gz) of an ended worker's access point: its logs, job report, job spec and monitoring "
        "samples with a MANIFEST.json, as the sweeper wrote it under paths.archives before removing the access point.",
        {404: "No such worker, or no archive of it (paths.archives unset, not cleaned yet, or pruned) (HTML page)."},
    ),
    "/monitor/errors": ("Error classifications: confirmed and suggested rules, hits and examples.", {}),
    "/monitor/logs": (
        "Payload logs (the pilots' stdout/stderr lines): the newest 500 matching ?task, job, rank, stream "
        "(stdout|stderr|meta) and grep (text), newest last; refreshes itself (?refresh=seconds, default 5: follow). "
        "Jobs whose log reached its bound are marked truncated.",
        {400: "A filter that is not a number, or an unknown stream (HTML page)."},
    ),
    "/monitor/errors/{rule_id}/promote": (
        "Confirm a suggested error classification (form with the CSRF token, "
        "optional class). Redirects (303) back to /monitor/errors.",
        {400: "Refused: unknown rule, bad class or CSRF token (HTML page)."},
    ),
    "/monitor/errors/add": (
        "Add an error rule (form with the CSRF token: source, code, diag_pattern, class, status), recorded with "
        "the token's subject. Redirects (303) back to /monitor/errors.",
        {400: "Refused: a missing or bad field, or a bad CSRF token (HTML page)."},
    ),
    "/monitor/errors/{rule_id}/edit": (
        "Edit an error rule (form with the CSRF token and the fields to change), recorded with the token's subject. "
        "Redirects (303) back to /monitor/errors.",
        {400: "Refused: unknown rule, a bad field or CSRF token (HTML page)."},
    ),
    "/monitor/errors/{rule_id}/delete": (
        "Delete an error rule (form with the CSRF token), recorded with the token's subject. "
        "Redirects (303) back to /monitor/errors.",
        {400: "Refused: unknown rule or a bad CSRF token (HTML page)."},
    ),
    "/monitor/task/{task_id}/set": (
        "Set a task's priority and/or share (form with the CSRF token: priority, share; share 'none' removes the "
        "limit). Redirects (303) back to the task's page.",
        {400: "Refused: unknown or ended task, a bad value or CSRF token (HTML page)."},
    ),
    "/monitor/sites": ("Sites and queues: workers by state and recent throughput.", {}),
    "/monitor/alerts": (
        "Alerts of the harvester on this machine: firing first, then resolved (?all=1: also the conditions that "
        "never fired), and each webhook's deliveries.",
        {},
    ),
    "/monitor/alerts.json": (
        "The alert states as JSON: {alerts: [{rule, key, state, severity, labels, value, threshold, since, "
        "resolved_at, summary}], deliveries: {webhook: {sent, pending, dropped}}} (?all=1: also state ok); "
        "what `harvester-edge alerts --json` prints.",
        {},
    ),
    "/metrics": ("Prometheus text exposition: jobs, ranges, workers, HTTP request timings, token expiry.", {}),
}
_MONITOR_SCOPE = ["admin", "harvester"]
_RULE_FIELDS = ("source", "code", "diag_pattern", "class", "status")
_FORM_FIELDS = {  # a monitor form's fields besides csrf (default: class)
    "/monitor/errors/add": _RULE_FIELDS,
    "/monitor/errors/{rule_id}/edit": _RULE_FIELDS,
    "/monitor/errors/{rule_id}/delete": (),
    "/monitor/task/{task_id}/set": ("priority", "share"),
}


def _document_monitor(path: str, method: str, operation: dict[str, Any]) -> None:
    description, errors = _MONITOR[path]
    names = ["admin"] if method == "post" else _MONITOR_SCOPE
    how = (
        "Authorization: Bearer, or once ?token=... (kept in a cookie)"
        if path != "/metrics"
        else "Authorization: Bearer"
    )
    operation["description"] = f"{description}\n\nScope: {scope_text(names)}; {how}."
    operation[SCOPE_KEY] = names
    responses = operation.setdefault("responses", {})
    ok = responses.setdefault("200", {"description": "Successful Response"})
    kind = "text/plain" if path == "/metrics" else "application/json" if path.endswith(".json") else "text/html"
    ok["content"] = {kind: {"schema": {"type": "string"}}}
    if method == "post":
        responses.pop("200", None)
        back = "the task's page" if path.startswith("/monitor/task/") else "/monitor/errors"
        responses["303"] = {"description": f"Done: back to {back}."}
    responses["403"] = {
        "description": "No token or a scope that may not read this (HTML page; plain text on /metrics)."
    }
    for code, text in errors.items():
        responses[str(code)] = {"description": text}
    if "422" in responses:
        responses["422"] = {
            "description": "A path or query parameter of the wrong type or out of range (plain text).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    if "requestBody" not in operation and method == "post":
        operation["requestBody"] = {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            name: {"type": "string"} for name in _FORM_FIELDS.get(path, ("class",)) + ("csrf",)
                        },
                    }
                }
            }
        }
    if not operation.get("parameters") and "requestBody" not in operation:
        operation["parameters"] = (
            [
                {
                    "name": "refresh",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer"},
                    "description": "auto-refresh seconds",
                }
            ]
            if path != "/metrics"
            else []
        )
        if path == "/metrics":
            operation["x-request"] = "none: a GET without parameters"


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec FastAPI generated, with the legacy dialect split per method and the monitor documented."""
    paths = spec.setdefault("paths", {})
    paths.pop("/server/panda/{method}", None)
    for name in _LEGACY:
        ops = {"get": _legacy_operation(name, "get")}
        if name != "isAlive":
            ops["post"] = _legacy_operation(name, "post")
        paths[f"/server/panda/{name}"] = ops
    for path, ops in paths.items():
        for method, operation in ops.items():
            if path in _MONITOR:
                _document_monitor(path, method, operation)
            elif path.startswith("/api/v1/"):
                if path in _V1:
                    _document_v1(path, method, operation)
                if method == "get" and not operation.get("parameters"):
                    operation["x-request"] = "none: a GET without parameters"
                operation.get("responses", {}).pop("422", None)  # never sent by /api/v1 (module doc)
    _add_envelope(spec)
    return spec


# -- the /api/v1 routes of v1.py (documented here so that v1.py stays about behaviour) -----------------------
_ANY_JSON = {"content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}}
_V1: dict[str, tuple[str | None, str, str, str, dict | None]] = {  # path: (module, summary, description, data, body)
    "/api/v1/pilot/acquire_jobs": (
        "pilot",
        "Get jobs for a site",
        "Dispatch up to n_jobs jobs of the active tasks to site_name (PanDA "
        "pilot/acquire_jobs). In token mode the jobs go to the token's harvester (and a pilot token's worker). "
        "Brokerage: memory (MB one rank of the queue may use; legacy mem), memory_min and core_count (cores per "
        "rank) hand out only jobs of tasks whose memory estimate (declared, or measured by the scouts) fits.",
        "{StatusCode: 0, jobs: [job description, ...]}; StatusCode 20 and no jobs when there is no work.",
        None,
    ),
    "/api/v1/pilot/update_job": (
        "pilot",
        "Report a job's state",
        "A pilot's heartbeat or final report (job_id, job_status, error codes, "
        "n_events, ...). Only the harvester or worker the job was dispatched to may report it (else 403).",
        "{StatusCode: 0, command} (command NULL, or tobekilled when the job must stop).",
        None,
    ),
    "/api/v1/pilot/update_jobs_bulk": (
        "pilot",
        "Report the states of several jobs",
        "job_list: updates as in pilot/update_job. Each entry is "
        "applied on its own; a bad or foreign entry gets its own error and does not undo the others.",
        "one answer per entry, in order (StatusCode 0 and command, or an error code and ErrorDiag).",
        None,
    ),
    "/api/v1/pilot/get_job_status": (
        "pilot",
        "Status of jobs",
        "job_ids: PandaIDs. Read-only.",
        "one entry per job with its status and attempt number.",
        None,
    ),
    "/api/v1/pilot/update_worker_status": (
        "pilot",
        "A worker's pilot started or finished",
        "harvester_id, worker_id, status (started | finished), "
        "site, node_id (PanDA's pilot/update_worker_status); a harvester may only write its own workers.",
        "true.",
        None,
    ),
    "/api/v1/pilot/update_worker_node": (
        "pilot",
        "Describe a worker node",
        "site, host_name, cpu and memory figures of the node a pilot runs on "
        "(PanDA's pilot/update_worker_node); stored in the service's worker_nodes table.",
        "null.",
        None,
    ),
    "/api/v1/pilot/update_worker_node_gpu": (
        "pilot",
        "Describe a worker node's GPUs",
        "site, host_name and the GPU model, count, memory and driver "
        "(PanDA's pilot/update_worker_node_gpu); stored with the node.",
        "null.",
        None,
    ),
    "/api/v1/pilot/update_worker_pilot_status": (
        "pilot",
        "A worker's pilot started or finished (older name)",
        "The older name of "
        "pilot/update_worker_status, kept for clients that still use it: the same parameters and checks.",
        "true.",
        None,
    ),
    "/api/v1/event/acquire_event_ranges": (
        "event",
        "Get event ranges for a job",
        "job_id (and its task_id, jobset_id), n_ranges. The ranges are "
        "reserved for the job; a job that ended or must die gets none.",
        "a list of {eventRangeID, startEvent, lastEvent, LFN, GUID, scope}.",
        None,
    ),
    "/api/v1/event/update_event_ranges": (
        "event",
        "Report event ranges",
        "event_ranges: a JSON string of reports (version 0: [{eventRangeID, "
        "eventStatus, ...}]; version 1: [{zipFile, eventRanges: [...]}]). Reports for ranges of jobs the caller "
        "does not own are refused one by one.",
        "{Returns: [bool per report], ...} (see PanDA's answer).",
        None,
    ),
    "/api/v1/event/get_available_event_range_count": (
        "event",
        "Number of ranges still to dispatch",
        "Ready ranges of the active tasks (of one task with task_id). Read-only.",
        "an integer.",
        None,
    ),
    "/api/v1/harvester/heartbeat": (
        "harvester",
        "A harvester is alive",
        "harvester_id and optional data (its attributes). Keeps last_heartbeat for the monitor.",
        "true.",
        None,
    ),
    "/api/v1/harvester/update_workers": (
        "harvester",
        "Report a harvester's workers",
        "harvester_id and workers: [{workerID, status, "
        "computingSite, nodeID, pandaid_list, ...}] (a list or its JSON). pandaid_list binds each worker's "
        "pilot to its jobs.",
        "one true per worker.",
        None,
    ),
    "/api/v1/harvester/acquire_commands": (
        "harvester",
        "Commands for a harvester",
        "harvester_id, n_commands. The embedded service sends no commands to harvesters.",
        "[] (always empty).",
        _ANY_JSON,
    ),
    "/api/v1/harvester/acknowledge_commands": (
        "harvester",
        "Acknowledge commands",
        "command_ids. Nothing to acknowledge here.",
        "true.",
        _ANY_JSON,
    ),
    "/api/v1/harvester/report_worker_statistics": (
        "harvester",
        "Worker statistics of a queue",
        "harvester_id, panda_queue, statistics (JSON). Accepted; "
        "the monitor counts workers from update_workers instead.",
        "true.",
        _ANY_JSON,
    ),
    "/api/v1/creds/get_access_token": (
        "creds",
        "Exchange a token key for a short-lived token",
        "client_name and token_key, with the old token "
        "as Bearer (pilot3 refresh, also with GET). The new token has the key's scope and expires no later than "
        "the key.",
        "the new access token (as PanDA: {user_proxy: token}).",
        None,
    ),
    "/api/v1/creds/get_token_key": (
        "creds",
        "Get a token key for a client name",
        "client_name: the caller's own name, one of its workers "
        "(H/worker/N, harvester scope) or, with the admin scope, any name. At most one new key per name per "
        "key_min_interval.",
        "the key (as PanDA: {tokenKey: key}).",
        None,
    ),
    "/api/v1/system/is_alive": (
        None,
        "Is the service up",
        "No token needed; changes nothing.",
        "a sign of life (see PanDA's answer).",
        None,
    ),
    "/api/v1/metaconfig/get_resource_types": (
        "metaconfig",
        "Resource types",
        "The resource types jobs are shaped by.",
        "a list of {resource_name, mincore, maxcore, minrampercore, maxrampercore}.",
        None,
    ),
    "/api/v1/task/submit": (
        "task",
        "Submit a task",
        "A task specification (name, payload, events, events_per_range, jobs, ...).",
        "{task_id}.",
        None,
    ),
    "/api/v1/task/list": ("task", "List tasks", "Every task with its counters. Read-only.", "a list of tasks.", None),
    "/api/v1/task/show": ("task", "One task", "task_id. Read-only.", "the task with its jobs and range counts.", None),
    "/api/v1/task/kill": (
        "task",
        "Kill a task",
        "task_id: its jobs get the tobekilled command.",
        "{task_id, status}.",
        None,
    ),
    "/api/v1/task/retry": (
        "task",
        "Retry a task",
        "task_id: its failed ranges are made ready again.",
        "{task_id, status}.",
        None,
    ),
    "/api/v1/task/set": (
        "task",
        "Set a task's priority and share",
        "task_id; priority (dispatch order, higher first, -1000000..1000000) and/or share (the fraction in (0, 1] "
        "of the running jobs the task may hold while other tasks wait; clear_share: no limit). Only a defined or "
        "running task; takes effect at the next job dispatch.",
        "{task_id, priority, share}.",
        None,
    ),
    "/api/v1/errors/list": (
        "errors",
        "List error rules",
        "status (optional: suggested or confirmed; then ranked by hits). Read-only.",
        "a list of rules {id, source, code, diag_pattern, class, status, hits, example, created}.",
        None,
    ),
    "/api/v1/errors/suggest": (
        "errors",
        "Suggest a rule from a job",
        "panda_id: a failed job (or one whose ranges failed). Read-only: nothing is stored.",
        "{panda_id, source, code, diag, diag_pattern, class, existing: the rules of that source and code}.",
        None,
    ),
    "/api/v1/errors/history": (
        "errors",
        "Error rule changes",
        "rule_id (optional). Read-only.",
        "a list of {id, rule_id, action, who, at, before, after}, newest first.",
        None,
    ),
    "/api/v1/errors/add": (
        "errors",
        "Add an error rule",
        "source, code, diag_pattern (a regex, '' matches any), class (system, payload, user, unknown, fatal), "
        "status (confirmed or suggested). The same source, code and pattern: its class and status change. "
        "Recorded with the token's subject.",
        "{id}.",
        None,
    ),
    "/api/v1/errors/edit": (
        "errors",
        "Edit an error rule",
        "id and the fields to change (source, code, diag_pattern, class, status). Recorded with the token's subject.",
        "the rule after the change.",
        None,
    ),
    "/api/v1/errors/delete": (
        "errors",
        "Delete an error rule",
        "id. Recorded with the token's subject.",
        "the rule as it was.",
        None,
    ),
    "/api/v1/harvester/get_work_shortage": (
        "harvester",
        "Is there a work shortage (WORK_SHORTAGE)",
        "No parameters. In a shortage a harvester gives its opportunistic queues no new jobs or workers and keeps "
        "queues with pledged_cores within the pledge. Read-only.",
        "{shortage: bool, mode: on|off|auto, reason}.",
        None,
    ),
    "/api/v1/harvester/get_failed_tasks": (
        "harvester",
        "Failed tasks a harvester worked on",
        "harvester_id (a harvester token: its own only; admin: any); since: only tasks whose last change (the "
        "failure) is at or after this epoch time (0: all); limit: at most this many (1..1000, default 100). The tasks "
        "in state failed with at least one job dispatched to that harvester, newest first: what a site's task_failed "
        "alert reads from a remote service. Read-only.",
        "{tasks: [{task_id, name, diag, modified}] newest first, truncated: true when more tasks matched than limit}.",
        None,
    ),
    "/api/v1/task/set_work_shortage": (
        "task",
        "Declare or end a work shortage",
        "mode: on (a shortage), off (never), auto (a shortage while no ready range and no activated job "
        "of an active task waits).",
        "{shortage, mode, reason} as it is now.",
        None,
    ),
    "/api/v1/logs/upload": (
        "logs",
        "Store a batch of payload log lines",
        "Harvester scope. harvester_id, source (the harvester's name of the pilot file read: worker and file), "
        "records: [{offset (byte offset of the line in source), job, rank, range, stream (stdout|stderr|meta), "
        "time, msg, worker}]. A line already stored under (harvester, source, offset) is skipped (a batch sent "
        "twice stores once). Lines of jobs the caller may not change (ownership: dispatched to another harvester "
        "or worker) or that do not exist are refused per job; a job's lines stop at central.payload_log_max_mb "
        "and the job is marked truncated.",
        "{stored, duplicate, dropped (over the bound), refused: [PandaIDs]}.",
        None,
    ),
    "/api/v1/logs/list": (
        "logs",
        "Read payload log lines",
        "Admin scope (like task/show). Filters: task_id, panda_id, rank, stream, grep (a substring of the line); "
        "after: only lines with a larger id (follow: pass the last_id of the previous answer); limit. Read-only.",
        "{lines: [{id, job, task, worker, rank, range, stream, time, msg}] oldest first, last_id, truncated: "
        "[{job, bytes, lines, dropped}] of the matching jobs whose bound was hit}.",
        None,
    ),
}


def v1_entry(path: str) -> dict[str, Any] | None:
    """v1doc keyword arguments of a v1.py route documented in _V1 (None when it is not there)."""
    if path not in _V1:
        return None
    module, summary, description, data, body = _V1[path]
    get = path.endswith(
        (
            "/get_token_key",
            "/get_access_token",
            "/get_job_status",
            "/get_resource_types",
            "/is_alive",
            "/list",
            "/show",
            "/suggest",
            "/history",
            "/get_available_event_range_count",
            "/get_work_shortage",
            "/get_failed_tasks",
        )
    )
    return v1doc(module, summary, description, data, body=not get, request_body=body)


def _document_v1(path: str, method: str, operation: dict[str, Any]) -> None:
    module, summary, description, data, body = _V1[path]
    doc = v1doc(module, summary, description, data, body=method != "get", request_body=body)
    operation["summary"] = doc["summary"]
    operation["description"] = doc["description"]
    operation.update(doc["openapi_extra"])
    responses = operation.setdefault("responses", {})
    for code, entry in doc["responses"].items():
        responses[str(code)] = {
            "description": entry["description"],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}},
        }


def _add_envelope(spec: dict[str, Any]) -> None:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Envelope", Envelope.model_json_schema())
