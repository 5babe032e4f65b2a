"""Who may talk to the service, and from which page: one ASGI middleware, outermost (FastPath included).

Before any other work (no body is read, no token checked) every HTTP request passes:
1. Trusted mode only: the peer. A TCP peer must be loopback or in central.trusted_networks; a connection
   without a client address must come in through central.unix_socket. Anything else: 403.
2. Host (DNS rebinding): in trusted mode on every request, in token mode on state-changing ones. The host name
   must be one the service answers to: localhost, an IP literal (a rebinding attack always uses a name), this
   machine's name, the unix socket, or central.allowed_hosts.
3. Browsers (CSRF) on state-changing requests: an Origin that is a web origin must be the service's own (same
   scheme://host:port as the Host header) or listed in central.allowed_origins; Sec-Fetch-Site cross-site or
   same-site is refused; a /api/v1 POST carrying an Origin must be application/json (no "simple" form or
   text/plain bodies). Clients that send no Origin (pilot, harvester, curl) pass. PanDA pilots send
   `Origin: <vo>.pilot` (PANDA_AUTH_ORIGIN, not a web origin: browsers only send scheme://host[:port] or "null"),
   which passes too.
4. GET changes nothing. The exceptions are the calls real PanDA clients make with GET (pilot3
   pilot/util/https.py, PanDA server pandaserver/api/v1/credential_management_api.py):
   - creds/get_access_token (v1) and get_access_token (legacy): pilot3 refresh_oidc_token() downloads a new
     token with GET ?client_name=...&token_key=... (and the Origin header above);
   - creds/get_token_key (v1) and get_token_key (legacy): Harvester's credential manager, GET in PanDA's API.
   Both need a bearer token (a browser cannot attach one cross-site) and pass the checks of 2 and 3 like a POST.
   Read-only GETs (pilot get_job_status / legacy getStatus, metaconfig/get_resource_types, the monitor pages)
   stay GET. Every other legacy method answers GET with 405 (the v1 routes are POST-only in v1.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# State-changing calls that real PanDA clients send with GET (see the module docstring for who and where).
CREDENTIAL_GETS = frozenset(
    {
        "/api/v1/creds/get_access_token",
        "/api/v1/creds/get_token_key",
        "/api/v1/credential/get_token_key",  # Harvester's name of it (v1_harvester.py)
        "/server/panda/get_access_token",
        "/server/panda/get_token_key",
    }
)
# Legacy methods that change nothing and may be called with GET; every other legacy method is POST-only.
LEGACY_READS = frozenset({"isAlive", "getStatus", "getResourceTypes"})
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
WANTED = frozenset({b"host", b"origin", b"sec-fetch-site", b"content-type"})
CACHE_SIZE = 4096  # decisions per peer address / Host value are remembered (ipaddress parsing costs ~5 us)


@lru_cache(maxsize=1)
def machine_names() -> frozenset[str]:
    """This machine's host name and FQDN (a remote client in token mode calls the service by them)."""
    names = {socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:  # pragma: no cover - getfqdn only fails without any resolver
        pass
    return frozenset(n for n in names if n)


def split_host(value: str) -> tuple[str, str | None]:
    """'Name:port' / '[::1]:port' / 'name' -> (lowercase name, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        name, port = value.split(":")
        return name, port
    return value, None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware; `settings` is the CentralSettings, `trusted` whether the service runs without tokens."""

    def __init__(self, app: Any, settings: Any, trusted: bool) -> None:
        self.app: ASGIApp = app
        self.state = getattr(app, "state", None)
        self.trusted = trusted
        self.unix_socket = getattr(settings, "unix_socket", None)
        self.networks = [ipaddress.ip_network(c, strict=False) for c in getattr(settings, "trusted_networks", [])]
        self.allowed_origins = {o.rstrip("/").lower() for o in getattr(settings, "allowed_origins", [])}
        hosts = {h.lower() for h in getattr(settings, "allowed_hosts", [])}
        self.any_host = "*" in hosts
        self.hosts = LOCAL_NAMES | machine_names() | hosts
        if self.unix_socket is not None:
            path = str(self.unix_socket).lower()
            self.hosts |= {path, quote(path, safe="").lower()}
        self._peers: dict[str, str | None] = {}
        self._host_names: dict[str, str | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        client = scope.get("client")
        log.info(
            "refused %s %s from %s: %s",
            scope["method"],
            scope.get("path", "")[:200],
            f"{client[0]}" if client else "unix socket",
            message,
        )
        await respond(send, scope.get("path", ""), status, message)

    # -- the checks: pure over the scope, so they are tested without a server -----------------------------
    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(HTTP status, message) when the request must be refused, None when it may go on."""
        if self.trusted:
            why = self.untrusted_peer(scope)
            if why:
                return 403, why
        method, path = scope["method"], scope.get("path", "")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", []) if k in WANTED}
        changing = method not in SAFE_METHODS or path in CREDENTIAL_GETS
        if self.trusted or changing:
            why = self.bad_host(headers.get("host"))
            if why:
                return 403, why
        if (
            method in ("GET", "HEAD")
            and path.startswith("/server/panda/")
            and path not in CREDENTIAL_GETS
            and path[len("/server/panda/") :] not in LEGACY_READS
        ):
            return 405, (
                f"{path[len('/server/panda/') :][:100]!r} changes state: send it with POST "
                f"(GET only for {', '.join(sorted(LEGACY_READS | {'get_access_token', 'get_token_key'}))})"
            )
        if changing:
            return self.cross_site(method, path, headers)
        return None

    def untrusted_peer(self, scope: Scope) -> str | None:
        client = scope.get("client")
        if not client:
            if self.unix_socket is not None:
                return None
            return "trusted mode: a connection without a peer address is only accepted on central.unix_socket"
        return remembered(self._peers, str(client[0]), self._peer_verdict)

    def _peer_verdict(self, peer: str) -> str | None:
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:
            return f"trusted mode: peer {peer[:80]!r} is not an IP address"
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.is_loopback or any(addr in net for net in self.networks):
            return None
        return (
            f"trusted mode: peer {addr} is neither loopback nor in central.trusted_networks; use a token "
            f"(trusted: false) or list its network"
        )

    def bad_host(self, host: str | None) -> str | None:
        if host is None or self.any_host:  # HTTP/1.0 clients may send none; browsers always do
            return None
        return remembered(self._host_names, host, self._host_verdict)

    def _host_verdict(self, host: str) -> str | None:
        name = split_host(host)[0].rstrip(".")
        if name in self.hosts or is_ip(name) or name.endswith(".localhost"):
            return None
        return (
            f"Host {host[:100]!r} is not a name of this service (DNS rebinding?): call it by localhost, an "
            f"IP address, {sorted(machine_names())} or add the name to central.allowed_hosts"
        )

    def cross_site(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        origin = headers.get("origin")
        listed = origin is not None and origin.rstrip("/").lower() in self.allowed_origins
        if (
            origin is not None
            and not listed
            and ("://" in origin or origin.strip().lower() == "null")
            and urlsplit(origin.strip()).netloc.lower() != headers.get("host", "").strip().lower()
        ):
            return 403, (
                f"cross-site request refused: Origin {origin[:100]!r} is not this service's origin "
                f"nor in central.allowed_origins"
            )
        site = headers.get("sec-fetch-site", "").lower()
        if site in ("cross-site", "same-site") and not listed:
            return 403, f"cross-site request refused (Sec-Fetch-Site: {site})"
        if origin is not None and method == "POST" and path.startswith("/api/v1/"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return 415, (
                    f"a browser-sent /api/v1 call must be Content-Type: application/json, got {ctype[:80] or 'none'!r}"
                )
        return None


def remembered(cache: dict[str, str | None], key: str, verdict) -> str | None:
    """verdict(key), computed once per key (the cache is emptied when full: a flood of new keys costs time only)."""
    try:
        return cache[key]
    except KeyError:
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        value = cache[key] = verdict(key)
        return value


async def respond(send: Send, path: str, status: int, message: str) -> None:
    """The refusal in the dialect of the path: the v1 envelope, plain text elsewhere (legacy, monitor)."""
    if path.startswith("/api/v1/"):
        body = json.dumps({"success": False, "message": message, "data": None}).encode()
        ctype = b"application/json"
    else:
        body, ctype = (message + "\n").encode(), b"text/plain; charset=utf-8"
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if status == 405:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
