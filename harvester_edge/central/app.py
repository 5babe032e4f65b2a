"""HTTP: the /api/v1 dialect (envelope {success, message, data}) and the legacy /server/panda dialect, one service.

Every rejection (bad input, unknown id, illegal state change) is answered in the dialect's own format and
writes nothing (each service write is one savepoint); auth failures are HTTP 403.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from harvester_edge.errors import StoreError

from . import apidoc, apidocs, legacy, v1
from .errors import AuthError, CentralError
from .gate import CappedBodies, refusal
from .guard import Guard
from .hotpath import FastPath
from .service import CentralService
from .tokens import TokenAuthority

log = logging.getLogger(__name__)
Mount = Callable[[FastAPI], None]  # adds routes of a sibling (the web monitor) to the app; see harvester_edge.server


def envelope(data: Any = None, success: bool = True, message: str = "", status: int = 200) -> Response:
    body = json.dumps({"success": success, "message": message, "data": data}, default=str)
    return Response(body, status_code=status, media_type="application/json")


def create_app(
    settings: Any, service: CentralService, authority: TokenAuthority | None = None, mounts: Sequence[Mount] = ()
) -> FastAPI:
    """The FastAPI app. Without an authority the app runs in trusted mode (no tokens): only when settings say
    trusted (server.py also checks the listen address). `mounts` add sibling routes beside the API (the appliance
    mounts the web monitor: harvester_edge.server); the central service itself knows nothing of them."""
    if authority is None and not settings.trusted:
        raise CentralError("central.trusted is false: create_app needs a TokenAuthority to check tokens")
    app = FastAPI(
        title="harvester-edge central service",
        description="PanDA-compatible jobs, event ranges and tokens. Dialects: /api/v1/<module>/<method> "
        "(envelope {success, message, data}) and /server/panda/<method> (legacy).",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.service = service
    app.state.authority = authority
    app.state.settings = settings
    app.add_middleware(CappedBodies, state=app.state)  # body cap, token before body, gunzip, JSON depth

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        message = "invalid request: " + "; ".join(parts)[:2000]
        if not request.url.path.startswith("/api/v1/"):  # the monitor: a plain 422 (apidoc.py documents it)
            return Response(message + "\n", status_code=422, media_type="text/plain")
        return envelope(None, False, message)

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> Response:
        return envelope(None, False, str(exc), status=403)

    @app.exception_handler(CentralError)
    async def _refused(request: Request, exc: CentralError) -> Response:
        return envelope(None, False, str(exc))

    @app.exception_handler(StoreError)
    async def _database(request: Request, exc: StoreError) -> Response:
        # the database cannot answer now (a restart, a row locked too long): an outage, clients retry later
        log.warning("central DB unavailable answering %s %s: %s", request.method, request.url.path, exc)
        _status, content_type, body = refusal(request.url.path, [], CentralError("database unavailable, retry"))
        return Response(body, status_code=503, media_type=content_type.decode())

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        # last resort: a bug, never an answer to input (those are fixed where they arise); logged with traceback
        log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        _status, content_type, body = refusal(request.url.path, [], CentralError("internal error (logged)"))
        return Response(body, status_code=500, media_type=content_type.decode())

    app.include_router(v1.router, prefix="/api/v1")
    app.include_router(legacy.router, prefix="/server/panda")
    for mount in mounts:  # e.g. the web monitor (/monitor) and Prometheus /metrics
        mount(app)
    generated = app.openapi

    def documented() -> dict[str, Any]:  # FastAPI's spec completed by apidoc (legacy per method, monitor)
        if app.openapi_schema is None:
            app.openapi_schema = apidoc.complete(generated())
        return app.openapi_schema

    app.openapi = documented  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    apidocs.install(app)  # /docs and /redoc with their assets served from here (no CDN)
    return app


def create_asgi(
    settings: Any, service: CentralService, authority: TokenAuthority | None = None, mounts: Sequence[Mount] = ()
) -> Guard:
    """What the server runs: the FastAPI app behind the hot path for job updates and event ranges, both behind
    the Guard (trusted-mode peer, Host, Origin and GET checks before any other work)."""
    return Guard(FastPath(create_app(settings, service, authority, mounts)), settings, trusted=authority is None)
