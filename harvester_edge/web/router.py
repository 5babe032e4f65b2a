"""The web monitor: server-rendered pages under /monitor and Prometheus /metrics, on the central service's app.

Same auth rules as the API: in trusted mode (no TokenAuthority) every page is open; otherwise reading needs a
token with scope harvester or admin (Authorization: Bearer, or once `?token=...`, kept in a cookie), and
confirming an error classification needs admin. Forms carry a CSRF token (csrf.py); GET changes nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse

from harvester_edge import metrics as m
from harvester_edge import pilot_files
from harvester_edge.central.auth import bearer
from harvester_edge.central.errors import AuthError, CentralError, NotFound
from harvester_edge.central.limits import BIG
from harvester_edge.metrics import HttpTiming

from . import csrf, data, pages, readers
from .render import render

log = logging.getLogger(__name__)
Id = Annotated[int, PathParam(ge=0, le=BIG)]  # ids of rows: SQLite holds 63 bits, a larger number is a 422, not a 500
COOKIE = "he_monitor_token"
READ_SCOPES = {"harvester", "admin"}


def harvester_db_path(app: FastAPI) -> Path | None:
    """The harvester DB next to the central DB (the embedded default), unless the router was given one."""
    explicit = getattr(app.state, "monitor_harvester_db", None)
    if explicit is not None:
        return Path(explicit)
    db = getattr(app.state.settings, "db", None)
    return Path(db).with_name("harvester.db") if db else None


def _check(request: Request, scopes: set[str]) -> None:
    authority = request.app.state.authority
    if authority is None:
        return
    token = bearer(request) or request.query_params.get("token") or request.cookies.get(COOKIE)
    if not token:
        raise AuthError("the monitor needs a token: open it once with ?token=<token with scope harvester or admin>")
    claims = authority.verify(token)
    if not scopes & set(str(claims.get("scope", "")).split()):
        raise AuthError(f"token scope {claims.get('scope')!r} may not do this here: needs one of {sorted(scopes)}")


def _base(request: Request) -> tuple[dict[str, Any], str | None]:
    """What every page's template gets (refresh, path, CSRF field and token), and the CSRF cookie's nonce."""
    refresh = request.query_params.get("refresh", "")  # ASCII digits only: "²".isdigit() but int("²") fails
    token, nonce = csrf.form_token(request)
    return {
        "refresh": int(refresh) if refresh.isascii() and refresh.isdigit() and len(refresh) < 6 else 10,
        "path": request.url.path,
        "csrf_field": csrf.FIELD,
        "csrf_token": token,
    }, nonce


def _respond(request: Request, html: str, status: int, nonce: str | None) -> HTMLResponse:
    response = HTMLResponse(html, status_code=status)
    csrf.set_cookie(response, nonce)
    query_token = request.query_params.get("token")
    if query_token:  # remembered so links and the auto-refresh need not carry it
        response.set_cookie(COOKIE, query_token, httponly=True, samesite="strict")
    return response


def _html(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    base, nonce = _base(request)
    return _respond(request, render(template, {**base, **context}), status, nonce)


async def _page(request: Request, name: str, *ids: Any) -> Response:
    """The page pages.<name>(..., *ids), built and rendered in a reader process (readers.py): the token is
    checked here first; the event loop only waits."""
    try:
        _check(request, READ_SCOPES)
    except AuthError as exc:
        return _html(request, "error.html", {"title": "not allowed", "message": str(exc)}, 403)
    base, nonce = _base(request)
    service = request.app.state.service
    log_dir = getattr(service, "pilot_log_dir", None)
    status, html = await readers.run(
        readers.page,
        str(service.db.path),
        str(log_dir) if log_dir else None,
        harvester_db_path(request.app),
        name,
        dict(request.query_params),
        time.time(),
        ids,
        base,
    )
    return _respond(request, html, status, nonce)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)  # the service's root leads a browser to the monitor
    def site_root() -> Response:
        return RedirectResponse("/monitor/", status_code=307)

    @router.get("/monitor", include_in_schema=False)
    def root() -> Response:
        return RedirectResponse("/monitor/", status_code=307)

    @router.get("/monitor/", response_class=HTMLResponse, summary="monitor: dashboard")
    async def dashboard(request: Request) -> Response:
        return await _page(request, "dashboard")

    @router.get("/monitor/task/{task_id}", response_class=HTMLResponse, summary="monitor: one task")
    async def task(request: Request, task_id: Id) -> Response:
        return await _page(request, "task", task_id)

    @router.get("/monitor/job/{panda_id}", response_class=HTMLResponse, summary="monitor: one job")
    async def job(request: Request, panda_id: Id) -> Response:
        return await _page(request, "job", panda_id)

    @router.get("/monitor/jedilog/{name}", response_class=HTMLResponse, summary="monitor: an uploaded log")
    async def jedilog(request: Request, name: str) -> Response:
        return await _page(request, "jedilog", name)

    @router.get("/monitor/job/{panda_id}/log", summary="monitor: a job's log tarball, as its pilot staged it out")
    def job_log(request: Request, panda_id: Id) -> Response:
        try:
            _check(request, READ_SCOPES)
            job = data.central_job(request.app.state.service.db.reader(), panda_id)
            lfn = (data.pilot_fields(job)["log_file"] or {}).get("lfn") if job else None
            found = data.find_log_tarball(getattr(request.app.state.settings, "pilot_log_dir", None), lfn)
            if found is None or lfn is None:  # find_log_tarball finds nothing without a name
                raise NotFound(f"job {panda_id}: no log tarball under central.pilot_log_dir")
            body = pilot_files.read_bytes(found[0], found[1], data.LOG_TARBALL_CAP)
        except AuthError as exc:
            return _html(request, "error.html", {"title": "not allowed", "message": str(exc)}, 403)
        except (NotFound, OSError, pilot_files.Unreadable) as exc:
            return _html(request, "error.html", {"title": "not found", "message": str(exc)}, 404)
        return Response(
            body, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{quote(lfn)}"'}
        )

    @router.get("/monitor/worker/{worker_id}", response_class=HTMLResponse, summary="monitor: one worker")
    async def worker(request: Request, worker_id: Id) -> Response:
        return await _page(request, "worker", worker_id)

    @router.get(
        "/monitor/worker/{worker_id}/file",
        response_class=HTMLResponse,
        summary="monitor: a log, script or stdout/stderr file of a worker's access point",
    )
    async def worker_file(request: Request, worker_id: Id, name: str) -> Response:
        return await _page(request, "worker_file", worker_id, name)

    @router.get("/monitor/errors", response_class=HTMLResponse, summary="monitor: errors and classifications")
    async def errors(request: Request) -> Response:
        return await _page(request, "errors")

    @router.post("/monitor/errors/{rule_id}/promote", summary="monitor: confirm a suggested classification")
    async def promote(request: Request, rule_id: Id) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        klass = (form.get("class") or [""])[0] or None
        try:
            csrf.check(request, form)  # the Guard already refused a foreign Origin or Host
            _check(request, {"admin"})
            row = request.app.state.service.promote_error(rule_id, klass)
        except AuthError as exc:
            return _html(request, "error.html", {"title": "not allowed", "message": str(exc)}, 403)
        except CentralError as exc:
            return _html(request, "error.html", {"title": "refused", "message": str(exc)}, 400)
        log.info(
            "monitor: error classification %s (%s %s) confirmed as %s",
            row["id"],
            row["source"],
            row["code"],
            row["class"],
        )
        return RedirectResponse(f"/monitor/errors?done={quote(str(rule_id))}", status_code=303)

    @router.get("/monitor/sites", response_class=HTMLResponse, summary="monitor: sites and queues")
    async def sites(request: Request) -> Response:
        return await _page(request, "sites")

    @router.get("/monitor/alerts", response_class=HTMLResponse, summary="monitor: alerts")
    async def alerts(request: Request) -> Response:
        return await _page(request, "alerts")

    @router.get("/monitor/alerts.json", summary="monitor: alert states as JSON")
    async def alerts_json(request: Request) -> Response:
        try:
            _check(request, READ_SCOPES)
        except AuthError as exc:
            return JSONResponse({"error": str(exc)}, status_code=403)
        found = await readers.run(
            pages.alerts_data, harvester_db_path(request.app), request.query_params.get("all") == "1"
        )
        return JSONResponse(found)

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        try:
            _check(request, READ_SCOPES)
        except AuthError as exc:
            return Response(str(exc) + "\n", status_code=403, media_type="text/plain")
        tokens = getattr(request.app.state.settings, "tokens", None)
        service = request.app.state.service
        stored = await readers.run(  # the DB counts in a reader process; the timings are this process's own
            readers.stored_metrics,
            Path(service.db.path) if service is not None else None,
            harvester_db_path(request.app),
            getattr(tokens, "token_file", None),
        )
        return Response(stored + generate_latest(m.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


def monitor_router(app: FastAPI, harvester_db: Path | None = None, timing: bool = True) -> APIRouter:
    """The monitor's router for `app.include_router(...)`.

    harvester_db: the harvester's DB file (default: harvester.db next to the central DB, the embedded layout).
    timing: also time every request `app` answers for /metrics (False when the whole ASGI stack, hot path
    included, is already wrapped in metrics.HttpTiming)."""
    app.state.monitor_harvester_db = harvester_db
    if timing:
        app.add_middleware(HttpTiming, source=app)
    return build_router()
