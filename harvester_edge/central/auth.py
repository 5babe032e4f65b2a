"""Request authentication shared by both dialects: Bearer JWT unless the service runs in trusted mode."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from .errors import AuthError

# Which token scopes may call each module (v1) / method group (legacy).
MODULE_SCOPES = {
    "pilot": {"pilot", "harvester"},
    "event": {"pilot", "harvester"},
    "harvester": {"harvester"},
    "task": {"admin"},
    "errors": {"admin"},  # the error classification rules (read and change)
    "creds": {"pilot", "harvester", "admin"},
    "metaconfig": {"pilot", "harvester", "admin"},
    "job": {"pilot", "harvester", "admin"},
    "file_server": {"harvester", "admin"},
    "statistics": {"pilot", "harvester", "admin"},
    # module names of Harvester's communicator (request_ssl version) for creds/ and file_server/ (v1_harvester.py)
    "credential": {"pilot", "harvester", "admin"},
    "file": {"harvester", "admin"},
    # payload logs (central/paylogs.py): the routes narrow it, upload to harvesters and list to admins
    "logs": {"harvester", "admin"},
}


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def authorize(request: Request, module: str) -> dict[str, Any] | None:
    """Claims of the caller (None in trusted mode); AuthError when the token or its scope is not good enough."""
    authority = request.app.state.authority
    if authority is None:
        return None
    return check_token(authority, bearer(request), module)


def check_token(authority: Any, token: str | None, module: str) -> dict[str, Any]:
    if not token:
        raise AuthError("no token: send 'Authorization: Bearer <token>' (the service is not in trusted mode)")
    claims = authority.verify(token)
    allowed = MODULE_SCOPES.get(module, {"admin"})
    if not allowed & set(claims["scope"].split()):
        raise AuthError(f"token scope {claims['scope']!r} may not call {module}/...: needs one of {sorted(allowed)}")
    return claims
