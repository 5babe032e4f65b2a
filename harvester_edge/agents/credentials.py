"""Credentials: keep the harvester's own access token fresh, and give each worker's pilot a credential of its own.

Off in trusted mode. One agent, two issuers:
- remote service (central.mode remote): the PanDA key flow over HTTP. The harvester's token is in tokens.token_file,
  its key in tokens.key_file. The operator's first token (the long-lived initial one) is kept as
  <token_file>.initial and is the bearer of renewals once the current token has lapsed (daemon stopped or service
  unreachable for longer than a lifetime), so a pause never strands the harvester.
- embedded service: the service runs in this very process and holds the signing secret. The daemon's identity is a
  key minted in-process at start (its tokens carry that kid: `central keys` lists it, `central revoke SITE` ends it)
  and fresh tokens are issued in-process from it. Why not the HTTP key flow to ourselves: the round trip proves
  nothing the process does not already hold, and a bearer that lapsed (suspended process, a cycle stalled past a
  short lifetime) could never be renewed over HTTP, while in-process it always can. A revoked key is respected (no
  silent re-mint: the operator meant it); a key nearing its own expiry is replaced.
Either way the token is renewed when less than a third of its lifetime is left, and at once when a call gets 403
(the client's `renewer`, then one retry).

Pilot credentials: worker W of harvester H gets a key of its own for client f"{H}/worker/{W}" (held in memory) and,
with it, pilot-scoped tokens (claims harvester=H, worker=W) written to <access point>/token with mode 0600 and
renewed like the harvester's: never a copy of the harvester's token, and good for nothing but that worker's jobs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import jwt

from harvester_edge.agents.base import Agent
from harvester_edge.central.client import CentralAuthFailed, CentralRejected, CentralUnavailable
from harvester_edge.central.errors import AuthError, CentralError
from harvester_edge.central.tokens import worker_client_name
from harvester_edge.store import job_workers, workers

log = logging.getLogger(__name__)
TOKEN_FILE = "token"  # in each access point
RENEW_FRACTION = 1 / 3  # renew when less than this part of a token's lifetime is left
FORCED_RENEW_GAP = 1.0  # seconds: a 403 within this long after a renewal does not renew again


def write_secret(path: Path, text: str) -> None:
    """Write a secret atomically with mode 0600 from the start (never world-readable, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # whatever is there (a pilot may write into its access point) goes: never write through a link
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def token_claims(token: str | None) -> dict[str, Any]:
    try:  # the harvester only reads its own tokens' times; the service verifies the signature
        return jwt.decode(token or "", options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}


def token_expiry(token: str) -> float | None:
    try:
        exp = token_claims(token).get("exp")
        return None if exp is None else float(exp)
    except (TypeError, ValueError):
        return None


def needs_renewal(token: str | None, now: float) -> bool:
    """No token, unreadable, or less than RENEW_FRACTION of its own lifetime (exp - iat) left."""
    claims = token_claims(token)
    try:
        exp, iat = float(claims["exp"]), float(claims.get("iat", claims["exp"]))
    except (KeyError, TypeError, ValueError):
        return True
    return exp - now < max(exp - iat, 0.0) * RENEW_FRACTION


class InProcessIssuer:
    """Embedded service: tokens straight from the service's TokenAuthority (see the module doc for why)."""

    def __init__(self, authority: Any, identity: str, scopes: tuple[str, ...] = ("harvester",)) -> None:
        self.authority, self.identity, self.scopes = authority, identity, scopes
        # the daemon's key: minted without the per-client interval (a restart must not wait an hour)
        self.kid, _ = authority.new_key(identity, scopes, check_interval=False)
        self.token: str | None = None

    def own_token(self, client: Any, now: float) -> str:
        state = self.authority.key_state(self.kid)
        if state is None or state["revoked"]:
            raise CentralAuthFailed(
                f"the daemon's key {self.kid} of {self.identity!r} is revoked: restart the daemon to get a new one"
            )
        if state["expires"] - now < self.authority.settings.key_lifetime / 2:
            old, (self.kid, _) = self.kid, self.authority.new_key(self.identity, self.scopes, check_interval=False)
            log.info("daemon key %s of %s expires soon: new key %s", old, self.identity, self.kid)
        try:
            return self.authority.issue(self.identity, self.scopes, key_id=self.kid)
        except CentralError as exc:
            raise CentralRejected(str(exc)) from exc

    def store(self, client: Any, token: str) -> None:
        self.token = token
        client.set_token(token)

    def _bearer(self) -> dict[str, Any]:
        return {"sub": self.identity, "scope": " ".join(self.scopes), "kid": self.kid}

    def worker_key(self, client: Any, name: str) -> str:
        return self._guard(lambda: self.authority.key_for(self._bearer(), name)[1])

    def worker_token(self, client: Any, name: str, key: str) -> str:
        return self._guard(lambda: self.authority.exchange(self._bearer(), name, key))

    @staticmethod
    def _guard(fn):
        try:
            return fn()
        except AuthError as exc:
            raise CentralAuthFailed(str(exc)) from exc
        except CentralError as exc:
            raise CentralRejected(str(exc)) from exc


class HttpIssuer:
    """Remote service: the key flow over /api/v1/creds with the token and key files of the site config."""

    def __init__(self, identity: str, token_file: Path, key_file: Path | None) -> None:
        self.identity, self.token_file, self.key_file = identity, Path(token_file), key_file
        self.initial_file = self.token_file.with_name(self.token_file.name + ".initial")

    def _keep_initial(self, token: str | None, now: float) -> None:
        """Keep the operator's long-lived first token as the bearer of last resort for renewals."""
        claims = token_claims(token)
        if token and not self.initial_file.exists() and float(claims.get("exp", 0)) > now:
            write_secret(self.initial_file, token)

    def own_token(self, client: Any, now: float) -> str:
        if self.key_file is None:
            raise CentralRejected("central.tokens.key_file is not set: the harvester's token cannot be renewed")
        key = Path(self.key_file).read_text().strip()
        current = client.current_token()
        self._keep_initial(current, now)
        bearer = current
        if (token_expiry(current or "") or 0) <= now and self.initial_file.exists():
            bearer = self.initial_file.read_text().strip()  # the current one lapsed: the initial token still may
        return client.get_access_token(self.identity, key, bearer=bearer)

    def store(self, client: Any, token: str) -> None:
        write_secret(self.token_file, token)

    def worker_key(self, client: Any, name: str) -> str:
        return client.get_token_key(name)

    def worker_token(self, client: Any, name: str, key: str) -> str:
        return client.get_access_token(name, key)


class Credentials(Agent):
    name = "credentials"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._lock = threading.Lock()
        self._renewed_at = float("-inf")  # monotonic time of the last successful own renewal
        self._worker_keys: dict[int, str] = {}  # worker id -> its pilot key (memory only)
        self._worker_expiry: dict[int, tuple[float, float]] = {}  # worker id -> (expiry, lifetime) of its token
        self.renewals = 0
        if ctx.central is not None and self._active():
            ctx.central.renewer = self.renew_own  # a 403 anywhere renews at once, then the call is retried
            lifetime = ctx.config.central.tokens.access_lifetime
            if self.interval > lifetime * RENEW_FRACTION:
                log.warning(
                    "agents.credentials (%.0fs) is longer than a third of tokens.access_lifetime (%ss): "
                    "tokens will lapse between cycles and be renewed only at a 403; make it shorter",
                    self.interval,
                    lifetime,
                )

    def _active(self) -> bool:
        return not self.ctx.config.central.trusted

    def issuer(self) -> Any:
        client = self.central
        issuer = getattr(client, "issuer", None)
        if issuer is None:
            tokens = self.ctx.config.central.tokens
            if not tokens.token_file:
                return None
            issuer = client.issuer = HttpIssuer(self.ctx.config.site, tokens.token_file, tokens.key_file)
        return issuer

    def run_cycle(self, now: float) -> None:
        if not self._active() or self.ctx.central is None:
            return
        self.ctx.central.renewer = self.renew_own
        if self.issuer() is None:
            return  # a remote service without token_file: nothing to renew
        self.renew_own(now=now)
        self.hand_out(now)

    # -- the harvester's own token ------------------------------------------------------------------------------
    def renew_own(self, force: bool = False, now: float | None = None) -> bool:
        """Renew the harvester's token if due (or `force`: after a 403). True when a fresh token is in place."""
        issuer, client = self.issuer(), self.central
        if issuer is None:
            return False
        now = self.ctx.clock.now() if now is None else now
        with self._lock:
            if force and time.monotonic() - self._renewed_at < FORCED_RENEW_GAP:
                return True  # renewed a moment ago (another thread's 403): just retry with it
            current = client.current_token()
            if not force and not needs_renewal(current, now):
                return True
            expiry = token_expiry(current or "")
            try:
                token = issuer.own_token(client, now)
            except (CentralUnavailable, CentralRejected, OSError) as exc:
                left = f"expires in {expiry - now:.0f}s" if expiry and expiry > now else "already expired"
                log.error("renewing the harvester's token failed (%s): %s", left, exc)
                return False
            issuer.store(client, token)
            self._renewed_at = time.monotonic()
            self.renewals += 1
            claims = token_claims(token)
            log.info(
                "harvester token renewed%s: kid %s, valid for %.0fs",
                " after a 403" if force else "",
                claims.get("kid"),
                float(claims.get("exp", now)) - now,
            )
            return True

    # -- the pilots' credentials -----------------------------------------------------------------------------
    def link_jobs(self, client: Any, worker_id: int) -> None:
        """Tell the service which jobs the worker runs (update_workers' pandaid_list, as Harvester does) before its
        pilot gets a credential: the service then holds that credential to those jobs alone (central/ownership)."""
        jobs = job_workers.jobs_of_worker(self.ctx.store.connection(), worker_id)
        client.update_workers(
            [{"workerID": worker_id, "status": "running", "computingSite": self.ctx.config.site, "pandaid_list": jobs}],
            harvester_id=self.ctx.config.site,
        )

    def hand_out(self, now: float) -> None:
        """Each active worker with an access point: its own pilot token in <ap>/token, renewed when due."""
        issuer, client = self.issuer(), self.ctx.central
        rows = workers.live_access_points(self.ctx.store.connection())
        active = {int(r["id"]) for r in rows}
        for gone in set(self._worker_keys) - active:
            self._worker_keys.pop(gone, None)
        for gone in set(self._worker_expiry) - active:
            self._worker_expiry.pop(gone, None)
        failed: list[str] = []
        for row in rows:
            worker_id, ap = int(row["id"]), Path(row["access_point"] or "")
            if not row["access_point"] or not ap.is_dir():
                continue
            target = ap / TOKEN_FILE
            expiry, lifetime = self._worker_expiry.get(worker_id, (0.0, 0.0))
            if target.is_file() and expiry - now >= lifetime * RENEW_FRACTION and expiry > now:
                continue
            name = worker_client_name(issuer.identity, worker_id)
            try:
                key = self._worker_keys.get(worker_id)
                if key is None:
                    self.link_jobs(client, worker_id)
                    key = self._worker_keys[worker_id] = issuer.worker_key(client, name)
                token = issuer.worker_token(client, name, key)
            except CentralAuthFailed as exc:
                self._worker_keys.pop(worker_id, None)  # revoked or expired key: a new one next cycle
                failed.append(f"worker {worker_id}: {exc}")
                continue
            except (CentralUnavailable, CentralRejected) as exc:
                failed.append(f"worker {worker_id}: {exc}")
                continue
            write_secret(target, token)
            claims = token_claims(token)
            exp = float(claims.get("exp", now))
            self._worker_expiry[worker_id] = (exp, exp - float(claims.get("iat", now)))
        if failed:
            log.warning("pilot credentials not renewed for %d worker(s): %s", len(failed), "; ".join(failed[:5]))
