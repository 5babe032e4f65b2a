"""JWT access tokens signed by the service, and the pilot key flow (panda-protocol.md "Tokens").

A worker is submitted with an initial long-lived token plus a secret key. With the key (and a still valid token)
it gets short-lived access tokens. Every token carries the id of the key it descends from: revoking or expiring
the key ends the whole family, so a stolen token cannot be renewed forever.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import uuid
from pathlib import Path
from typing import Any, Callable

import jwt

from .db import Database
from .errors import AuthError, CentralError
from .settings import TokenSettings

log = logging.getLogger(__name__)
SCOPES = ("pilot", "harvester", "admin")


def load_or_create_secret(path: Path) -> bytes:
    """The HS256 signing secret; created with mode 0600 on first use."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        data = path.read_bytes().strip()
    if len(data) < 32:
        raise CentralError(f"token secret {path} is shorter than 32 bytes: delete it to have a new one made")
    return data


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TokenAuthority:
    """Issues and verifies tokens; keys live in the central DB (hashed)."""

    def __init__(self, db: Database, settings: TokenSettings, secret: bytes, clock: Callable[[], float]) -> None:
        self.db = db
        self.settings = settings
        self.secret = secret
        self.clock = clock

    def issue(self, client_name: str, scopes: list[str] | tuple[str, ...], lifetime: float | None = None,
              key_id: str | None = None) -> str:
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise CentralError(f"token scopes {list(scopes)} invalid: use some of {', '.join(SCOPES)}")
        now = int(self.clock())
        claims = {"sub": client_name, "aud": self.settings.audience, "iss": self.settings.issuer, "iat": now,
                  "exp": now + int(lifetime or self.settings.access_lifetime), "scope": " ".join(scopes),
                  "jti": uuid.uuid4().hex}
        if key_id:
            claims["kid"] = key_id
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid token; AuthError (403) for forged, expired, wrong-audience or revoked-key tokens."""
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], audience=self.settings.audience,
                                issuer=self.settings.issuer, options={"require": ["exp", "sub", "aud", "scope"]},
                                leeway=0)
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired: get a new one with get_access_token") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError(f"token audience is not {self.settings.audience!r}") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {exc}") from exc
        if int(claims["exp"]) <= self.clock():  # PyJWT checks against the wall clock; honour ours too
            raise AuthError("token expired: get a new one with get_access_token")
        kid = claims.get("kid")
        if kid:
            row = self.db.query("SELECT revoked, expires FROM token_keys WHERE key_id=?", (kid,))
            if not row or row[0]["revoked"] or row[0]["expires"] <= self.clock():
                raise AuthError(f"token's key {kid} is revoked or expired: submit the worker with a new key")
        return claims

    def new_key(self, client_name: str) -> tuple[str, str]:
        """(key_id, key) for a client; at most one new key per key_min_interval."""
        now = self.clock()

        def create(conn, key_id: str, key_hash: str):
            recent = conn.execute("SELECT count(*) FROM token_keys WHERE client_name=? AND created > ? "
                                  "AND revoked=0", (client_name, now - self.settings.key_min_interval)).fetchone()[0]
            if recent:
                raise CentralError(f"a key for {client_name!r} was issued less than "
                                   f"{self.settings.key_min_interval}s ago: use it, or revoke it first")
            conn.execute("INSERT INTO token_keys VALUES (?, ?, ?, ?, ?, 0)",
                         (client_name, key_id, key_hash, now, now + self.settings.key_lifetime))

        key_id, key = uuid.uuid4().hex, secrets.token_urlsafe(32)
        self.db.write(create, key_id, _hash(key))
        return key_id, key

    def pilot_credentials(self, client_name: str, scopes: tuple[str, ...] = ("pilot",)) -> tuple[str, str]:
        """(initial long-lived token, secret key) to submit a worker with."""
        key_id, key = self.new_key(client_name)
        return self.issue(client_name, scopes, self.settings.initial_lifetime, key_id), key

    def exchange(self, bearer: dict[str, Any], client_name: str, token_key: str) -> str:
        """A short-lived token for a client holding a valid token and its unrevoked, unexpired key."""
        if bearer.get("sub") != client_name and "harvester" not in bearer["scope"].split():
            raise AuthError(f"token of {bearer.get('sub')!r} cannot get tokens for {client_name!r}")
        rows = self.db.query("SELECT key_id, key_hash FROM token_keys WHERE client_name=? AND revoked=0 "
                             "AND expires > ?", (client_name, self.clock()))
        digest = _hash(token_key or "")
        match = next((r for r in rows if hmac.compare_digest(r["key_hash"], digest)), None)
        if match is None:
            raise AuthError(f"token key of {client_name!r} is wrong, expired or revoked")
        return self.issue(client_name, bearer["scope"].split(), key_id=match["key_id"])

    def revoke(self, client_name: str) -> int:
        return self.db.write(lambda c: c.execute("UPDATE token_keys SET revoked=1 WHERE client_name=? AND "
                                                 "revoked=0", (client_name,)).rowcount)
