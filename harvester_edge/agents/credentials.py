"""Credentials: keep the harvester's access token fresh and hand each running worker its own copy (mode 0600).

Off in trusted mode. The token is renewed with the token key (the central service's key flow) when less than a
third of its lifetime is left; the key itself expires and can be revoked centrally, so a stolen token cannot be
renewed forever.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import jwt

from harvester_edge import pilot_files
from harvester_edge.agents.base import Agent
from harvester_edge.central.client import CentralRejected, CentralUnavailable
from harvester_edge.states import WorkerState

log = logging.getLogger(__name__)
TOKEN_FILE = "token"  # in each access point


def write_secret(path: Path, text: str) -> None:
    """Write a secret atomically with mode 0600 from the start (never world-readable, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink()  # in an access point a pilot could have planted a link here: never written through
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def token_expiry(token: str) -> float | None:
    try:  # the harvester only reads its own token's expiry; the service verifies the signature
        return float(jwt.decode(token, options={"verify_signature": False}).get("exp"))
    except (jwt.PyJWTError, TypeError, ValueError):
        return None


class Credentials(Agent):
    name = "credentials"

    def run_cycle(self, now: float) -> None:
        settings = self.ctx.config.central
        if settings.trusted:
            return
        tokens = settings.tokens
        if not tokens.token_file:
            return  # embedded service, harvester on loopback: the client holds a service-issued token in memory
        token_file = Path(tokens.token_file)
        token = token_file.read_text().strip() if token_file.exists() else ""
        expiry = token_expiry(token) if token else None
        if tokens.key_file and (expiry is None or expiry - now < tokens.access_lifetime / 3):
            key = Path(tokens.key_file).read_text().strip()
            try:
                token = self.ctx.central.get_access_token(self.ctx.config.site, key)
            except (CentralUnavailable, CentralRejected) as exc:
                log.error("token renewal failed (expires %s): %s", f"in {expiry - now:.0f}s" if expiry else "?", exc)
                return
            write_secret(token_file, token)
            log.info("access token renewed; valid until %s", token_expiry(token))
        if not token:
            return
        for row in self.ctx.store.query("SELECT access_point FROM workers WHERE state IN (?, ?, ?)",
                                        (WorkerState.NEW.value, WorkerState.QUEUED.value, WorkerState.RUNNING.value)):
            ap = Path(row[0])
            if ap.is_dir():
                if _current(ap) != token:
                    write_secret(ap / TOKEN_FILE, token)


def _current(ap: Path) -> str | None:
    """The token file a worker's access point holds now (a pilot file: read through pilot_files, never a link)."""
    try:
        return pilot_files.read_bytes(ap, TOKEN_FILE, 64 * 1024).decode("utf-8", "replace")
    except (pilot_files.Unreadable, OSError):
        return None
