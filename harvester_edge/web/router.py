"""The web monitor: server-rendered pages under /monitor and Prometheus /metrics, on the central service's app.

Same auth rules as the API: in trusted mode (no TokenAuthority) every page is open; otherwise reading needs a
token with scope harvester or admin (Authorization: Bearer, or once `?token=...`, kept in a cookie), and
confirming an error classification needs admin. Forms carry a CSRF token (csrf.py); GET changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import JSONResponse

from harvester_edge import metrics as m
from harvester_edge import pilot_files
from harvester_edge.central.auth import bearer
from harvester_edge.central.errors import AuthError, CentralError, InvalidInput, NotFound
from harvester_edge.central.limits import BIG
from harvester_edge.central.store import pg
from harvester_edge.metrics import HttpTiming

from . import csrf, data, pages, readers
from .render import render

log = logging.getLogger(__name__)
Id = Annotated[int, PathParam(ge=0, le=BIG)]  # ids of rows: SQLite holds 63 bits, a larger number is a 422, not a 500
COOKIE = "he_monitor_token"
READ_SCOPES = {"harvester", "admin"}


def harvester_db_path(app: FastAPI) -> Path | None:
    """The harvester DB next to the central DB (the embedded default), unless the router was given one. With a
    PostgreSQL central.db: next to the service's files (central.files_dir, the work dir by default)."""
    explicit = getattr(app.state, "monitor_harvester_db", None)
    if explicit is not None:
        return Path(explicit)
    db = getattr(app.state.settings, "db", None)
    if pg.is_postgresql_url(db):
        files_dir = getattr(app.state.settings, "files_dir", None)
        return Path(files_dir) / "harvester.db" if files_dir else None
    return Path(db).with_name("harvester.db") if db else None


def _check(request: Request, scopes: set[str]) -> str:
    """Who the caller is (the token's subject; 'monitor (trusted)' in trusted mode); AuthError if not allowed."""
    authority = request.app.state.authority
    if authority is None:
        return "monitor (trusted)"
    token = bearer(request) or request.query_params.get("token") or request.cookies.get(COOKIE)
    if not token:
        raise AuthError("the monitor needs a token: open it once with ?token=<token with scope harvester or admin>")
    claims = authority.verify(token)
    if not scopes & set(str(claims.get("scope", "")).split()):
        raise AuthError(f"token scope {claims.get('scope')!r} may not do this here: needs one of {sorted(scopes)}")
    return f"{str(claims.get('sub') or '?')[:200]} (monitor)"


def _field(form: dict[str, list[str]], name: str) -> str | None:
    """A form field's value, stripped; None when it is missing or empty."""
    value = (form.get(name) or [""])[0].strip()
    return value or None


def _number(form: dict[str, list[str]], name: str, kind: type) -> Any:
    """A number field (None when empty); InvalidInput naming the field otherwise."""
    value = _field(form, name)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r:.80}") from exc


async def _change(request: Request, back: str, change: Callable[[str, dict[str, list[str]]], str]) -> Response:
    """A monitor form that changes something (admin): CSRF token and scope first, then change(who, form), which
    says what it did; 303 back to `back` with ?done=<what it did>."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    try:
        csrf.check(request, form)  # the Guard already refused a foreign Origin or Host
        who = _check(request, {"admin"})
        done = change(who, form)
    except AuthError as exc:
        return _html(request, "error.html", {"title": "not allowed", "message": str(exc)}, 403)
    except CentralError as exc:
        return _html(request, "error.html", {"title": "refused", "message": str(exc)}, 400)
    log.info("monitor: %s (by %s)", done, who)
    return RedirectResponse(f"{back}?done={quote(done)}", status_code=303)


def _rule_fields(form: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "source": _field(form, "source"),
        "code": _number(form, "code", int),
        "diag_pattern": form["diag_pattern"][0] if form.get("diag_pattern") else None,
        "class": _field(form, "class"),
        "status": _field(form, "status"),
    }


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


def central_url(service: Any) -> str | None:
    """The service's PostgreSQL database (what a reader process reads instead of the file), or None."""
    return service.db.url if service is not None and isinstance(service.db, pg.PgDatabase) else None


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
        central_url(service),
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

    @router.get(
        "/monitor/worker/{worker_id}/archive",
        summary="monitor: a worker's access point archive (logs, job report, monitoring) as the sweeper wrote it",
    )
    def worker_archive(request: Request, worker_id: Id) -> Response:
        try:
            _check(request, READ_SCOPES)
            hconn = data.open_harvester(harvester_db_path(request.app))
            try:
                found = data.worker_archive(hconn, worker_id)
            finally:
                if hconn is not None:
                    hconn.close()
            if found is None:
                raise NotFound(f"worker {worker_id}: no archive (paths.archives unset, or not cleaned yet)")
        except AuthError as exc:
            return _html(request, "error.html", {"title": "not allowed", "message": str(exc)}, 403)
        except (NotFound, OSError) as exc:
            return _html(request, "error.html", {"title": "not found", "message": str(exc)}, 404)
        return FileResponse(found["path"], media_type="application/gzip", filename=found["path"].name)

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
            who = _check(request, {"admin"})
            row = request.app.state.service.promote_error(rule_id, klass, who)
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
        return RedirectResponse(f"/monitor/errors?done={quote(f'rule {rule_id} confirmed')}", status_code=303)

    @router.post("/monitor/errors/add", summary="monitor: add an error rule")
    async def add_rule(request: Request) -> Response:
        def change(who: str, form: dict[str, list[str]]) -> str:
            f = _rule_fields(form)
            if f["source"] is None or f["code"] is None or f["class"] is None:
                raise InvalidInput("a rule needs a source, a code and a class")
            service = request.app.state.service
            rule_id = service.add_error_rule(
                f["source"], f["code"], f["diag_pattern"] or "", f["class"], f["status"] or "confirmed", who
            )
            return f"rule {rule_id} added"

        return await _change(request, "/monitor/errors", change)

    @router.post("/monitor/errors/{rule_id}/edit", summary="monitor: edit an error rule")
    async def edit_rule(request: Request, rule_id: Id) -> Response:
        def change(who: str, form: dict[str, list[str]]) -> str:
            request.app.state.service.edit_error_rule(rule_id, _rule_fields(form), who)
            return f"rule {rule_id} changed"

        return await _change(request, "/monitor/errors", change)

    @router.post("/monitor/errors/{rule_id}/delete", summary="monitor: delete an error rule")
    async def delete_rule(request: Request, rule_id: Id) -> Response:
        def change(who: str, form: dict[str, list[str]]) -> str:
            request.app.state.service.delete_error_rule(rule_id, who)
            return f"rule {rule_id} deleted"

        return await _change(request, "/monitor/errors", change)

    @router.post("/monitor/task/{task_id}/set", summary="monitor: set a task's priority and share")
    async def task_set(request: Request, task_id: Id) -> Response:
        def change(who: str, form: dict[str, list[str]]) -> str:
            share_text = _field(form, "share")
            clear = share_text is not None and share_text.lower() in ("none", "-")
            share = None if clear else _number(form, "share", float)
            out = request.app.state.service.set_task_dispatch(
                task_id, _number(form, "priority", int), share, clear, who
            )
            return f"priority {out['priority']}, share {out['share'] if out['share'] is not None else 'none'}"

        return await _change(request, f"/monitor/task/{task_id}", change)

    @router.get("/monitor/sites", response_class=HTMLResponse, summary="monitor: sites and queues")
    async def sites(request: Request) -> Response:
        return await _page(request, "sites")

    @router.get("/monitor/alerts", response_class=HTMLResponse, summary="monitor: alerts")
    async def alerts(request: Request) -> Response:
        return await _page(request, "alerts")

    @router.get("/monitor/logs", response_class=HTMLResponse, summary="monitor: payload logs, live")
    async def payload_logs(request: Request) -> Response:
        return await _page(request, "logs")

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
            central_url(service),
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
