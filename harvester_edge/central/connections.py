"""Connection limits of the central service's HTTP server: a header-read deadline, a connection cap, the fd limit.

uvicorn closes idle keep-alive connections but has no deadline for a request's headers: a client that sends
"GET / HTTP/1.1\r\nHost: x\r\n" and nothing more holds a connection (and a file descriptor) forever, and a few
hundred such clients make the service unreachable once the process runs out of descriptors. Here:

- every connection must finish a request's headers within `header_timeout` seconds of connecting (or of its
  first byte after an answered request on a keep-alive connection), else it is closed;
- at most `max_connections` connections are open: a new connection beyond it closes the connection that has
  waited longest for its headers or idled longest between keep-alive requests (so half-open or idle clients
  cannot lock real ones out); when every other one is busy
  answering a request, the new one is answered 503 and closed. So requests in flight are bounded too (one per
  connection). uvicorn's own limit_concurrency is not used: it counts half-open and closing connections, so a
  flood of half-open ones would turn every real request into a 503;
- at start the soft RLIMIT_NOFILE is raised to the hard limit, and max_connections is kept below it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any, Protocol

log = logging.getLogger(__name__)
FD_RESERVE = 64  # descriptors kept for the database, the log, the listening socket and batch commands
SUMMARY_INTERVAL = 60.0  # seconds between the warnings that count closed connections


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "cannot raise the open-file limit from %d to its hard limit %d (%s); keeping %d", soft, hard, exc, soft
            )
            return soft
        log.info("raised the open-file limit (RLIMIT_NOFILE) from %d to the hard limit %d", soft, hard)
        return hard
    return hard if soft == resource.RLIM_INFINITY else soft


def connection_cap(max_connections: int, fd_limit: int) -> int:
    """max_connections, lowered to fit under the open-file limit (with FD_RESERVE left for everything else)."""
    room = max(fd_limit - FD_RESERVE, 16)
    if max_connections > room:
        log.warning(
            "central.max_connections %d does not fit under the open-file limit %d: using %d (raise the "
            "hard limit with `ulimit -Hn` / limits.conf, or lower central.max_connections)",
            max_connections,
            fd_limit,
            room,
        )
        return room
    return max_connections


class _Closed:
    """Counts of connections closed by the limits, in at most one warning per SUMMARY_INTERVAL."""

    REASONS = {
        "timeout": "sent no complete request headers within the header timeout",
        "evicted": "waited longest for their headers when max_connections was reached",
        "refused": "came while max_connections were open and busy (answered 503)",
    }

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.REASONS, 0)
        self.logged = float("-inf")

    def note(self, reason: str, header_timeout: float, max_connections: int) -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self.logged >= SUMMARY_INTERVAL:
            log.warning(
                "central HTTP (header_timeout %ss, max_connections %d): closed connections that %s "
                "(at most one such line per %.0fs)",
                header_timeout,
                max_connections,
                "; ".join(f"{text}: {self.counts[key]}" for key, text in self.REASONS.items()),
                SUMMARY_INTERVAL,
            )
            self.counts = dict.fromkeys(self.REASONS, 0)
            self.logged = now


REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class _Cycle(Protocol):
    """uvicorn's RequestResponseCycle (either protocol's): the request being answered."""

    response_complete: bool


class HeaderDeadline:
    """Mixin over uvicorn's HTTP protocol class (H11Protocol or HttpToolsProtocol, see protocol_class).

    Relies on what both have: `connections` (the server's open connections), `cycle` (the request being answered:
    a new one is made when a request's headers are complete), `transport` and `loop`. The class attributes are
    one server's (protocol_class makes a class per server)."""

    # what the uvicorn class provides, declared for the type checker (annotations only: no class attributes);
    # the super() calls below reach that class (next in the MRO), which mypy cannot see: hence their ignores
    connections: set[Any]
    cycle: _Cycle | None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    header_timeout: float
    max_connections: int
    waiting: dict  # protocol -> (timer, the cycle when it was armed), oldest first: connections awaiting headers,
    # and idle keep-alive ones (timer None: uvicorn's keep-alive timer closes them); both may be evicted
    closing: list[int]  # [connections closed here whose connection_lost has not come yet]
    closed: _Closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()
        # connections closed here leave `connections` only in their connection_lost, a loop iteration later
        while len(self.connections) - self.closing[0] > self.max_connections:
            victim = next(iter(self.waiting))
            if victim is self:  # every other connection is busy answering a request: this one waits outside
                self._close("refused", REFUSED)
                return
            victim._close("evicted")

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        entry = self.waiting.get(self)
        if (entry is None or entry[0] is None) and (before is None or before.response_complete):
            self._arm()  # the first byte of the next request on a keep-alive connection
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:
            self._disarm()  # headers complete: a request is being answered

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        cycle = self.cycle
        if not self.transport.is_closing() and (cycle is None or cycle.response_complete):
            self._disarm()  # idle keep-alive: uvicorn's timeout_keep_alive closes it; evictable meanwhile
            self.waiting[self] = (None, cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if getattr(self, "_counted_closing", False):
            self._counted_closing = False
            self.closing[0] -= 1
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()  # re-armed: it moves to the end of the waiting order
        loop = self.loop
        self.waiting[self] = (loop.call_later(self.header_timeout, self._timeout), self.cycle)

    def _disarm(self) -> None:
        entry = self.waiting.pop(self, None)
        if entry is not None and entry[0] is not None:
            entry[0].cancel()

    def _timeout(self) -> None:
        entry = self.waiting.get(self)
        if entry is not None and self.cycle is entry[1]:
            self._close("timeout")
        else:  # a request started since (its headers parsed outside data_received: pipelining)
            self._disarm()

    def _close(self, reason: str, answer: bytes = b"") -> None:
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        log.debug("central HTTP: closing the connection from %s: %s", getattr(self, "client", None), reason)
        self.closed.note(reason, self.header_timeout, self.max_connections)
        self._counted_closing = True
        self.closing[0] += 1
        if answer:
            transport.write(answer)
        transport.close()


def protocol_class(header_timeout: float, max_connections: int) -> type:
    """A uvicorn HTTP protocol class (the one uvicorn's "auto" picks) with HeaderDeadline, for one server."""
    try:
        import httptools  # noqa: F401 - optional (uvicorn's faster parser): only to learn whether uvicorn can use it
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base: type = HttpToolsProtocol
    except ImportError:  # pragma: no cover - h11 only
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    attrs: dict[str, Any] = {
        "header_timeout": float(header_timeout),
        "max_connections": int(max_connections),
        "waiting": {},
        "closing": [0],
        "closed": _Closed(),
        "__module__": __name__,
    }
    return type(f"Guarded{base.__name__}", (HeaderDeadline, base), attrs)
