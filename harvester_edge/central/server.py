"""Running the central service: in-process on a thread (EmbeddedCentral) or as its own process (serve)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn

from harvester_edge.filemodes import private_file
from harvester_edge.metrics import HttpTiming

from .app import Mount, create_asgi
from .connections import connection_cap, protocol_class, raise_fd_limit
from .errors import CentralError
from .service import CentralService
from .settings import CentralSettings, db_path, db_target
from .store.pg import PgDatabase, is_postgresql_url
from .tokens import TokenAuthority, load_or_create_secret

WATCHDOG_LEASE = 0x6861727666  # pg_try_advisory_lock key of the watchdog (one process of several runs it)

log = logging.getLogger(__name__)


def trusted_allowed(settings: CentralSettings) -> tuple[bool, str]:
    """Trusted mode (no tokens) only on a unix socket, loopback or an explicitly listed network."""
    if settings.unix_socket is not None:
        return True, "unix socket"
    host = "127.0.0.1" if settings.host == "localhost" else settings.host
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False, f"host {settings.host!r} is not an IP address"
    if addr.is_loopback:
        return True, "loopback"
    if addr.is_unspecified:
        return False, f"{host} listens on every interface"
    for cidr in settings.trusted_networks:
        if addr in ipaddress.ip_network(cidr, strict=False):
            return True, f"in trusted network {cidr}"
    return False, f"{host} is neither loopback nor in central.trusted_networks {settings.trusted_networks}"


def check_trusted(settings: CentralSettings) -> None:
    if settings.trusted:
        allowed, why = trusted_allowed(settings)
        if not allowed:
            raise CentralError(
                f"central.trusted is true but {why}: trusted mode (no tokens) is only allowed on "
                f"loopback, a unix socket or a network listed in central.trusted_networks; "
                f"listen on 127.0.0.1, list the network, or set trusted: false"
            )


class EmbeddedCentral:
    """The service on a uvicorn thread of this process; `.url` once listening; stop() within a bounded time.
    `mounts`: sibling routes added to its app (the appliance mounts the web monitor: harvester_edge.server)."""

    def __init__(
        self, settings: CentralSettings, clock: Callable[[], float] = time.time, mounts: Sequence[Mount] = ()
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.mounts = tuple(mounts)
        self.service: CentralService | None = None
        self.authority: TokenAuthority | None = None
        self.url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.watchdog_runs = 0  # cycles this process ran (with PostgreSQL: while it held the lease)
        self.listen_socket: socket.socket | None = None  # serve_workers: the socket the parent bound

    def start(self, timeout: float = 15.0) -> str:
        """Open the DB, listen, serve on a thread; returns the URL. Refuses trusted mode off loopback."""
        check_trusted(self.settings)
        path = db_path(self.settings)
        self.service = CentralService.open(db_target(self.settings), self.settings, self.clock)
        try:
            self._start(path, timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "central service listening on %s (%s)",
            self.url,
            "trusted mode, no tokens" if self.settings.trusted else "tokens required",
        )
        return self.listening()

    def listening(self) -> str:
        """The URL of the service; a RuntimeError before start() or after stop()."""
        if self.url is None:
            raise RuntimeError("the central service is not listening (start() it first)")
        return self.url

    def opened(self) -> CentralService:
        """The service's database layer and logic; a RuntimeError before start() or after stop()."""
        if self.service is None:
            raise RuntimeError("the central service is not open (start() it first)")
        return self.service

    def _start(self, path: Path, timeout: float) -> None:
        service = self.opened()
        service.db.start_checkpointer()
        if not self.settings.trusted:
            secret_file = self.settings.tokens.secret_file or path.with_name("central.secret")
            private_file(Path(secret_file))  # 0600 (created so by tokens.py; an older one is tightened)
            self.authority = TokenAuthority(
                service.db, self.settings.tokens, load_or_create_secret(Path(secret_file)), self.clock
            )
        app = HttpTiming(create_asgi(self.settings, service, self.authority, self.mounts))  # hot path timed too
        app.route_labels()  # now, not in the first request's time
        sock = self._bind()
        cap = connection_cap(self.settings.max_connections, raise_fd_limit())
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=60,
            http=protocol_class(self.settings.header_timeout, cap),
        )  # see connections.py
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run_loop, args=(self._server, sock), name="central-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise CentralError(f"central service did not start listening within {timeout}s: see the log")
            time.sleep(0.01)
        self._watchdog = threading.Thread(target=self._watch, name="central-watchdog", daemon=True)
        self._watchdog.start()

    @staticmethod
    def _run_loop(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            import uvloop  # optional: a faster event loop when installed

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(server.serve(sockets=[sock]))

    def _bind(self) -> socket.socket:
        if self.listen_socket is not None:
            return self.listen_socket
        return self.bind()

    def bind(self) -> socket.socket:
        if self.settings.unix_socket is not None:
            path = Path(self.settings.unix_socket)
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            # before listen(): nobody can connect until mode and group are set
            if self.settings.unix_socket_group is not None:
                try:
                    shutil.chown(path, group=self.settings.unix_socket_group)
                except (LookupError, PermissionError) as exc:
                    sock.close()
                    raise CentralError(
                        f"central.unix_socket_group {self.settings.unix_socket_group!r}: cannot "
                        f"give {path} to that group ({exc}); pick a group you belong to"
                    ) from exc
            path.chmod(self.settings.unix_socket_mode)
            self.url = f"http+unix://{path}"
            return sock
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit it: answers go out in two writes, Nagle + delayed ACK would add 40 ms each
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.settings.host, self.settings.port))
        except OSError as exc:
            sock.close()
            raise CentralError(
                f"central service cannot listen on {self.settings.host}:{self.settings.port}: "
                f"{exc}; pick another central.port (0 = any free port)"
            ) from exc
        host, port = sock.getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        return sock

    def _watch(self) -> None:
        """The watchdog cycle. On PostgreSQL with several service processes it runs in one of them: the holder of
        an advisory lock (a lease on a connection of its own; a process that dies or loses its connection lets it
        go, and another process takes it on its next cycle)."""
        service = self.opened()
        db = service.db
        lease = None
        try:
            while not self._stop.wait(self.settings.watchdog_interval):
                try:
                    if isinstance(db, PgDatabase):
                        lease = db.hold_lease(WATCHDOG_LEASE, lease)
                        if lease is None:
                            continue  # another process runs the watchdog
                    service.run_watchdog()
                    self.watchdog_runs += 1
                except Exception:
                    log.exception("central watchdog cycle failed; trying again in %ss", self.settings.watchdog_interval)
        finally:
            if lease is not None:
                lease.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._watchdog is not None:
            self._watchdog.join(timeout)
        if self.service is not None:
            self.service.close()
        self._thread = self._watchdog = self._server = None
        self.url = None


def serve(
    settings: CentralSettings, on_ready: Callable[[str], None] | None = None, mounts: Sequence[Mount] = ()
) -> None:
    """Standalone process: run until SIGINT/SIGTERM (the handlers only set a flag)."""
    central = EmbeddedCentral(settings, mounts=mounts)
    url = central.start()
    if on_ready is not None:
        on_ready(url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        central.stop()


def serve_workers(
    settings: CentralSettings,
    workers: int,
    on_ready: Callable[[str], None] | None = None,
    mounts: Sequence[Mount] = (),
) -> None:
    """`central serve --workers N`: N service processes (forked) accept on one socket bound here; a process that
    dies is started again; SIGINT/SIGTERM stop them all. Needs PostgreSQL (a SQLite file has one writer)."""
    target = db_target(settings)
    if not is_postgresql_url(target):
        raise CentralError(
            f"central serve --workers {workers} needs central.db: postgresql://... (a SQLite file has one "
            "writer: run one process, or move the central DB to PostgreSQL)"
        )
    check_trusted(settings)
    CentralService.open(target, settings).close()  # schema in place, and an unreachable DB fails here, once
    if not settings.trusted:  # made once here, not raced by the processes
        load_or_create_secret(Path(settings.tokens.secret_file or db_path(settings).with_name("central.secret")))
    binder = EmbeddedCentral(settings)
    sock = binder.bind()
    sock.listen(2048)  # connections wait in the backlog until a process accepts them
    url = binder.url or ""
    children: dict[int, int] = {}  # pid -> slot

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the child: one service process on the shared socket
            code = 0
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                central = EmbeddedCentral(settings, mounts=mounts)
                central.listen_socket = sock
                central.url = url
                central.start()
                stop.wait()
                central.stop()
            except BaseException:
                log.exception("central service process %d failed", os.getpid())
                code = 1
            finally:
                os._exit(code)
        children[pid] = slot
        log.info("central service process %d (slot %d) started", pid, slot)

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    for slot in range(workers):
        spawn(slot)
    if on_ready is not None:
        on_ready(url)
    try:
        while not stopping.wait(0.2):
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                slot = children.pop(pid, -1)  # -1: not one of ours
                if slot >= 0 and not stopping.is_set():
                    log.warning("central service process %d ended (status %d); starting another", pid, status)
                    spawn(slot)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.05)
            else:
                children.pop(pid, None)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        sock.close()
