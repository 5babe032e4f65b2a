"""CappedBodies: the middleware in front of every FastAPI route (the hot writes have the same steps in FastPath).

For a request with a body, in this order: in token mode the token of an API call (both dialects) -> 403 when
missing or not good enough; a Content-Length over central.max_body -> 413; only then the body is read through
bodies.read_body (capped, gzip inflated in a stream: by header, and by magic on /server/panda) and /api/v1 JSON is
parsed once for its depth and encoding (not the multipart bodies of FILE_UPLOADS). The route sees the plain body
again. A /api/v1 GET's parameters sent in its body (Harvester's communicator does) become its query string.
Refusals are in the dialect's format.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import check_token
from .bodies import (
    DEFAULT_MAX_BODY,
    BodyReceiver,
    Disconnected,
    answer,
    has_body,
    header,
    parse_json,
    read_body,
)
from .errors import AuthError, CentralError, InvalidInput
from .hotpath import bearer_token, dumps
from .legacy import METHODS

V1, LEGACY = "/api/v1/", "/server/panda/"
FILE_UPLOADS = frozenset(
    {"/api/v1/file_server/upload_jedi_log", "/api/v1/file_server/update_jedi_log", "/api/v1/file/update_jedi_log"}
)  # multipart bodies (v1_harvester.py)


def api_module(path: str) -> str | None:
    """The auth module of an API path (as auth.MODULE_SCOPES names them); None: no token needed or no API call."""
    if path.startswith(V1):
        module = path[len(V1) :].split("/", 1)[0]
        return None if module == "system" else module
    if path.startswith(LEGACY):
        return METHODS.get(path[len(LEGACY) :], (None,))[0]
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


def get_parameters(scope: Scope, body: bytes) -> Scope:
    """A /api/v1 GET whose parameters came in its body: Harvester's communicator
    (pandaharvester/harvestercommunicator/panda_communicator.py, request_ssl: `session.request("GET", url,
    data=data, headers=...)`) has requests put them there, form-encoded (a list as a repeated key) under its fixed
    header Content-Type: application/json. They become the query string the routes read (a JSON object body is
    accepted too); a GET that has a query string keeps it, body ignored."""
    text = body.strip()
    if not text or scope.get("query_string"):
        return scope
    if text[:1] == b"{":
        doc = parse_json(text)
        pairs = [(k, item) for k, v in doc.items() for item in (v if isinstance(v, list) else [v])]
        if any(isinstance(v, (dict, list)) for _, v in pairs):
            raise InvalidInput("GET parameters in a JSON body must be values or lists of values")
        text = urlencode([(k, "" if v is None else str(v)) for k, v in pairs]).encode()
    try:
        text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InvalidInput("GET parameters in the body must be form-encoded (ASCII)") from exc
    return dict(scope, query_string=text)


async def refuse(scope: Scope, send: Send, receive: BodyReceiver, exc: CentralError) -> None:
    status, content_type, body = refusal(scope["path"], scope["headers"], exc)
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await answer(send, receive, status, headers, body)


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
        incoming = BodyReceiver(receive)
        try:
            module = api_module(path)
            if self.state.authority is not None and module is not None:
                check_token(self.state.authority, bearer_token(headers), module)
            body = await read_body(
                incoming,
                headers,
                limit,
                sniff_gzip=path.startswith(LEGACY),
                timeout=getattr(self.state.settings, "body_timeout", None),
            )
            if path.startswith(V1) and scope["method"] == "GET":
                scope = get_parameters(scope, body)
                body = b""
            elif path.startswith(V1) and path not in FILE_UPLOADS and body.strip():
                parse_json(body)
        except Disconnected:
            return
        except CentralError as exc:
            await refuse(scope, send, incoming, exc)
            return
        headers = [
            (k, v) for k, v in headers if k not in (b"content-encoding", b"content-length", b"transfer-encoding")
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(dict(scope, headers=headers), replay, send)
