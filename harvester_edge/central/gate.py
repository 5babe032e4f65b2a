"""CappedBodies: the middleware in front of every FastAPI route (the hot writes have the same steps in FastPath).

For a request with a body, in this order: in token mode the token of an API call (both dialects) -> 403 when
missing or not good enough; a Content-Length over central.max_body -> 413; only then the body is read through
bodies.read_body (capped, gzip inflated in a stream: by header, and by magic on /server/panda) and /api/v1 JSON is
parsed once for its depth and encoding. The route sees the plain body again. Refusals are in the dialect's format.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import check_token
from .bodies import DEFAULT_MAX_BODY, Disconnected, has_body, header, parse_json, read_body, unread_body_headers
from .errors import AuthError, CentralError
from .hotpath import bearer_token, dumps
from .legacy import METHODS

V1, LEGACY = "/api/v1/", "/server/panda/"


def api_module(path: str) -> str | None:
    """The auth module of an API path (as auth.MODULE_SCOPES names them); None: no token needed or no API call."""
    if path.startswith(V1):
        module = path[len(V1):].split("/", 1)[0]
        return None if module == "system" else module
    if path.startswith(LEGACY):
        return METHODS.get(path[len(LEGACY):], (None,))[0]
    return None


def refusal(path: str, headers: list[tuple[bytes, bytes]], exc: CentralError) -> tuple[int, bytes, bytes]:
    """(HTTP status, content type, body) of a refused request, in the format of the path's dialect."""
    status = 403 if isinstance(exc, AuthError) else getattr(exc, "http_status", None)
    if path.startswith(V1):
        return status or 200, b"application/json", dumps({"success": False, "message": str(exc), "data": None})
    if path.startswith(LEGACY) and status != 403:
        answer = {"StatusCode": exc.status_code, "ErrorDiag": str(exc)}
        if b"application/json" in (header(headers, b"accept") or b""):
            return status or 200, b"application/json", dumps(answer)
        return status or 200, b"text/plain; charset=utf-8", urlencode(answer).encode()
    return status or 400, b"text/plain; charset=utf-8", str(exc).encode()


async def refuse(scope: Scope, send: Send, exc: CentralError) -> None:
    status, content_type, body = refusal(scope["path"], scope["headers"], exc)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *unread_body_headers(status)]})
    await send({"type": "http.response.body", "body": body})


class CappedBodies:
    """ASGI middleware: size cap, token before body, streamed gunzip, JSON depth (see the module docstring)."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state  # the app's state: settings (max_body) and authority (None in trusted mode)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        path, headers = scope["path"], scope["headers"]
        limit = getattr(self.state.settings, "max_body", DEFAULT_MAX_BODY)
        try:
            module = api_module(path)
            if self.state.authority is not None and module is not None:
                check_token(self.state.authority, bearer_token(headers), module)
            body = await read_body(receive, headers, limit, sniff_gzip=path.startswith(LEGACY),
                                   timeout=getattr(self.state.settings, "body_timeout", None))
            if path.startswith(V1) and body.strip():
                parse_json(body)
        except Disconnected:
            return
        except CentralError as exc:
            await refuse(scope, send, exc)
            return
        headers = [(k, v) for k, v in headers if k not in (b"content-encoding", b"content-length",
                                                           b"transfer-encoding")]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(dict(scope, headers=headers), replay, send)
