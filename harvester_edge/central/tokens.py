"""JWT access tokens signed by the service, and the pilot key flow (README.md "The central service").

A worker is submitted with an initial long-lived token plus a secret key. With the key (and a still valid token)
it gets short-lived access tokens. Every token carries the id (`kid`) of the key it descends from: revoking or
expiring the key ends the whole family, so a stolen token cannot be renewed forever. A token issued without a key
(tests, admin tools) gets a key row of its own with no secret, so it too has a kid that `central revoke` reaches.

Who may mint a key (get_token_key) for which client name:
- its own name (any scope): the new key inherits the token's scope and claims, and cannot outlive the key the token
  came from (expires = min(now + key_lifetime, parent's expiry)): a key chain always ends;
- a name in a harvester's own namespace f"{sub}/worker/{W}" (harvester scope): a pilot key, scope "pilot", claims
  harvester=sub and worker=W (the identity contract of issue 11), also bounded by the parent key;
- any other name: only with the admin scope (a pilot key, bounded by the admin token's key).
Revoking a client's keys revokes every key minted from them too.

"myself" (the PanDA pilot): pilot 3.11+ refreshes its token with get_access_token?client_name=pilot_server&
token_key=K, the same client name for every pilot. The name MYSELF ("pilot_server") therefore means "the bearer's
own name": the exchange looks for key K among the keys of the bearer's `sub`, and the new token is the bearer's.
So every pilot holds a credential of its own (sub "H/worker/W" minted by its harvester, or a standalone pilot
name), with its own key, and one pilot's key is useless with another pilot's token; many pilots refresh at once
without sharing a secret, and ownership.py holds each to its own jobs. get_token_key for "pilot_server" likewise
mints a key for the bearer's own name. A client literally named "pilot_server" cannot exist (issue-token refuses
it), so the alias can never reach someone else's keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from .errors import AuthError, CentralError
from .settings import TokenSettings
from .store import keys
from .store.database import Database
from .store.pg import PgDatabase

log = logging.getLogger(__name__)
SCOPES = ("pilot", "harvester", "admin")
WORKER_SEP = "/worker/"
MYSELF = "pilot_server"  # the client name pilot3 always asks tokens for: the bearer's own name (module doc)


def worker_client_name(harvester: str, worker: int | str) -> str:
    """The client name (token sub) of worker W's pilot credential of harvester H (identity contract)."""
    return f"{harvester}{WORKER_SEP}{worker}"


def worker_of(harvester: str, client_name: str) -> str | None:
    """W when client_name is f"{harvester}/worker/{W}" (W non-empty, without '/'), else None."""
    prefix = harvester + WORKER_SEP
    if not client_name.startswith(prefix):
        return None
    worker = client_name[len(prefix) :]
    return worker if worker and "/" not in worker and len(worker) <= 64 else None


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

    def __init__(
        self, db: Database | PgDatabase, settings: TokenSettings, secret: bytes, clock: Callable[[], float]
    ) -> None:
        self.db = db
        self.settings = settings
        self.secret = secret
        self.clock = clock

    @staticmethod
    def _check_scopes(scopes) -> list[str]:
        scopes = list(scopes or [])
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise CentralError(f"token scopes {scopes} invalid: use some of {', '.join(SCOPES)}")
        return scopes

    def issue(
        self,
        client_name: str,
        scopes: list[str] | tuple[str, ...],
        lifetime: float | None = None,
        key_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> str:
        """A signed token. Without key_id the token gets a secret-less key row of its own (so it has a kid)."""
        if client_name == MYSELF:
            raise CentralError(f"{MYSELF!r} is not a client name: it means 'myself' to get_access_token")
        scopes = self._check_scopes(scopes)
        now = int(self.clock())
        exp = now + int(lifetime or self.settings.access_lifetime)
        if not key_id:
            key_id = self._insert_key(client_name, "", exp, " ".join(scopes), None, extra, check_interval=False)
        claims = {
            "sub": client_name,
            "aud": self.settings.audience,
            "iss": self.settings.issuer,
            "iat": now,
            "exp": exp,
            "scope": " ".join(scopes),
            "jti": uuid.uuid4().hex,
            "kid": key_id,
            **(extra or {}),
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid token; AuthError (403) for forged, expired, wrong-audience or revoked-key tokens."""
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"require": ["exp", "sub", "aud", "scope", "kid"]},
                leeway=0,
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired: get a new one with get_access_token") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError(f"token audience is not {self.settings.audience!r}") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {exc}") from exc
        if int(claims["exp"]) <= self.clock():  # PyJWT checks against the wall clock; honour ours too
            raise AuthError("token expired: get a new one with get_access_token")
        kid = claims["kid"]
        row = keys.state(self.db.reader(), kid)
        if not row or row["revoked"] or row["expires"] <= self.clock():
            raise AuthError(f"token's key {kid} is revoked or expired: get a new key (central issue-token)")
        return claims

    # -- keys -----------------------------------------------------------------------------------------------
    def _insert_key(
        self,
        client_name: str,
        key_hash: str,
        expires: float,
        scope: str,
        parent: str | None,
        extra: dict[str, str] | None,
        check_interval: bool,
    ) -> str:
        now = self.clock()
        key_id = uuid.uuid4().hex

        def create(conn) -> None:
            if check_interval:
                recent = keys.recent_count(conn, client_name, now - self.settings.key_min_interval)
                if recent:
                    raise CentralError(
                        f"a key for {client_name!r} was issued less than "
                        f"{self.settings.key_min_interval}s ago: use it, or revoke it first"
                    )
            claims = json.dumps(extra) if extra else None
            keys.insert(conn, client_name, key_id, key_hash, now, expires, scope, parent, claims)

        self.db.write(create)
        return key_id

    def new_key(
        self,
        client_name: str,
        scopes: list[str] | tuple[str, ...] = ("pilot",),
        parent: str | None = None,
        extra: dict[str, str] | None = None,
        check_interval: bool = True,
    ) -> tuple[str, str]:
        """(key_id, key) for a client; at most one new key per key_min_interval (unless check_interval=False,
        for the service's own in-process use). With a parent key it expires no later than the parent."""
        scope = " ".join(self._check_scopes(scopes))
        expires = self.clock() + self.settings.key_lifetime
        if parent is not None:
            row = keys.state(self.db.reader(), parent)
            if not row or row["revoked"] or row["expires"] <= self.clock():
                raise AuthError(f"key {parent} is revoked or expired: it cannot have new keys")
            expires = min(expires, row["expires"])
        key = secrets.token_urlsafe(32)
        return self._insert_key(client_name, _hash(key), expires, scope, parent, extra, check_interval), key

    def key_for(self, bearer: dict[str, Any], client_name: str) -> tuple[str, str]:
        """get_token_key: a new key for client_name minted with the caller's token (rules in the module doc)."""
        sub, scopes, parent = bearer.get("sub"), bearer["scope"].split(), bearer.get("kid")
        if client_name == MYSELF:
            client_name = str(sub)
        if client_name == sub:
            extra: dict[str, str] = {k: str(bearer[k]) for k in ("harvester", "worker") if k in bearer}
            return self.new_key(client_name, scopes, parent=parent, extra=extra or None)
        worker = worker_of(str(sub), client_name) if "harvester" in scopes else None
        if worker is not None:
            # no per-name interval here: the key is bounded by its parent and a harvester may name any W anyway, so
            # the interval would protect nothing and would strand a restarted daemon's running workers for an hour
            return self.new_key(
                client_name,
                ("pilot",),
                parent=parent,
                extra={"harvester": str(sub), "worker": worker},
                check_interval=False,
            )
        if "admin" in scopes:
            return self.new_key(client_name, ("pilot",), parent=parent)
        raise AuthError(
            f"token of {sub!r} cannot get a key for {client_name!r}: only for its own name, its "
            f"workers ({sub}/worker/N, harvester scope) or, with the admin scope, any name"
        )

    def pilot_credentials(self, client_name: str, scopes: tuple[str, ...] = ("pilot",)) -> tuple[str, str]:
        """(initial long-lived token, secret key) to submit a worker with."""
        if client_name == MYSELF:
            raise CentralError(f"{MYSELF!r} is not a client name: it means 'myself' to get_access_token")
        key_id, key = self.new_key(client_name, scopes)
        return self.issue(client_name, scopes, self.settings.initial_lifetime, key_id), key

    def exchange(self, bearer: dict[str, Any], client_name: str, token_key: str) -> str:
        """A short-lived token for a client holding a valid token and its unrevoked, unexpired key.

        The token gets the key's scope and claims (never more than the key was minted with); the caller may ask
        for its own name, its workers' names (harvester scope) or, with the admin scope, any name."""
        sub, scopes = bearer.get("sub"), bearer["scope"].split()
        if client_name == MYSELF:
            client_name = str(sub)
        own = client_name == sub
        if not own and "admin" not in scopes and not ("harvester" in scopes and worker_of(str(sub), client_name)):
            raise AuthError(f"token of {sub!r} cannot get tokens for {client_name!r}")
        now = self.clock()
        rows = keys.usable(self.db.reader(), client_name, now)
        digest = _hash(token_key or "")
        match = next((r for r in rows if hmac.compare_digest(r["key_hash"], digest)), None)
        if match is None:
            raise AuthError(f"token key of {client_name!r} is wrong, expired or revoked")
        # keys made before keys had a scope: the caller's own scope for its own name, else pilot
        scope = (match["scope"] or (bearer["scope"] if own else "pilot")).split()
        extra = json.loads(match["claims"]) if match["claims"] else None
        lifetime = max(1, min(self.settings.access_lifetime, int(match["expires"] - now)))
        return self.issue(client_name, scope, lifetime, key_id=match["key_id"], extra=extra)

    def key_state(self, key_id: str) -> dict[str, Any] | None:
        row = keys.get(self.db.reader(), key_id)
        return dict(row) if row else None

    def revoke(self, client_name: str) -> int:
        """Revoke every key of a client and every key minted from them; the number of keys revoked."""

        return self.db.write(keys.revoke_family, client_name)


def list_keys(db: Database) -> list[dict[str, Any]]:
    """Every key (newest first): kid, client, scope, created, expires, revoked, parent, secret (has a key)."""
    rows = keys.listing(db.reader())
    return [
        {
            "kid": r["key_id"],
            "client": r["client_name"],
            "scope": r["scope"] or "",
            "created": r["created"],
            "expires": r["expires"],
            "revoked": bool(r["revoked"]),
            "parent": r["parent"] or "",
            "secret": bool(r["secret"]),
        }
        for r in rows
    ]
