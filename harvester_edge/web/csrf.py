"""CSRF tokens for the monitor's forms: a signed double-submit cookie, no JavaScript needed.

Every monitor page sets (once) a random nonce in an HttpOnly, SameSite=Strict cookie and puts
HMAC(process secret, nonce) in each form as a hidden field. A form POST is accepted only when the field matches
the cookie's nonce. Another site can neither read the field (same-origin policy) nor forge it: even a page on
another port of the same host, which can plant cookies for this host, does not know the secret. The secret lives
in this process: after a restart an open page's form is refused once ("reload the page").
The Guard (central/guard.py) also refuses a foreign Origin or Host before the form is read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from harvester_edge.central.errors import AuthError

COOKIE = "he_csrf"
FIELD = "csrf"
_NONCE = re.compile(r"[0-9a-f]{32}")


def process_secret(app: Any) -> bytes:
    """The app's signing secret, made on first use (one per process)."""
    secret = getattr(app.state, "monitor_csrf_secret", None)
    if secret is None:
        secret = app.state.monitor_csrf_secret = secrets.token_bytes(32)
    return secret


def sign(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, b"monitor-form:" + nonce.encode(), hashlib.sha256).hexdigest()


def _nonce(request: Request) -> str | None:
    value = request.cookies.get(COOKIE, "")
    return value if _NONCE.fullmatch(value) else None


def form_token(request: Request) -> tuple[str, str | None]:
    """(the hidden field's value, a new nonce to set as the cookie or None when the browser has one)."""
    nonce = _nonce(request)
    if nonce:
        return sign(process_secret(request.app), nonce), None
    fresh = secrets.token_hex(16)
    return sign(process_secret(request.app), fresh), fresh


def set_cookie(response: Response, nonce: str | None) -> None:
    if nonce:
        response.set_cookie(COOKIE, nonce, httponly=True, samesite="strict", path="/monitor")


def check(request: Request, form: dict[str, list[str]]) -> None:
    """AuthError unless the form's token matches the cookie's nonce."""
    nonce = _nonce(request)
    sent = (form.get(FIELD) or [""])[0]
    if nonce is None or not sent:
        raise AuthError("the form has no CSRF token or its cookie is missing: reload the page and submit it again")
    if not hmac.compare_digest(sent, sign(process_secret(request.app), nonce)):
        raise AuthError("the form's CSRF token is wrong or from before a restart: reload the page and submit again")
