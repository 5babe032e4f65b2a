"""The daemon: one process per site, agents on an APScheduler thread pool, a file lock, signals.

- `cron` mode (from crontab every minute): if another daemon holds the lock, say so in one line and exit 0 at once.
- SIGTERM/SIGINT: no new cycles, running cycles finish (bounded by daemon.stop_timeout), leases released, exit.
- SIGHUP: reload the site config; a bad new config is rejected with a log line and the old one kept.
Signal handlers only set flags; the main loop acts on them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import signal
import socket
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from harvester_edge.agents.base import Agent, AgentContext
from harvester_edge.config import SiteConfig, load_config
from harvester_edge.errors import ConfigError, HarvesterEdgeError
from harvester_edge.filemodes import private_dir, private_file, tighten_children
from harvester_edge.logs import setup_logging
from harvester_edge.replay.recorder import Recording
from harvester_edge.seams.clock import Clock
from harvester_edge.site import Site, daemon_site, restart_store, sync_queues
from harvester_edge.store import release_all

log = logging.getLogger(__name__)


class AlreadyRunning(HarvesterEdgeError):
    """Another daemon holds this site's lock file."""


class InstanceLock:
    """A non-blocking flock on <work_dir>/daemon.lock; the file holds the owner's pid for the message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent, tighten=False)  # the work dir; secure_paths tightens it once logging is up
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(
                    f"harvester-edge is already running (pid {self.holder() or '?'}, lock {self.path})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DaemonThreadPool:
    """The part of concurrent.futures.ThreadPoolExecutor that APScheduler uses, on daemon threads.

    concurrent.futures joins its worker threads at interpreter exit, so one cycle stuck in a call (a central service
    that never answers) would hold the process long past daemon.stop_timeout. These threads do not hold the exit.
    """

    def __init__(self, max_workers: int, name: str = "agent") -> None:
        self.max_workers = max_workers
        self.name = name
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()

    def submit(self, fn, *args, **kwargs) -> Future:
        future: Future = Future()
        self._work.put((future, fn, args, kwargs))
        with self._lock:
            if not self._idle.acquire(blocking=False) and len(self._threads) < self.max_workers:
                thread = threading.Thread(target=self._worker, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            thread = threading.current_thread()
            idle_name = thread.name
            # APScheduler passes the job first: log lines of a cycle carry the agent's name as their thread name
            thread.name = getattr(args[0], "name", idle_name) if args else idle_name
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
            thread.name = idle_name
            self._idle.release()

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


class DaemonThreadExecutor(BasePoolExecutor):
    """APScheduler executor over DaemonThreadPool."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(DaemonThreadPool(int(max_workers)))


class Daemon:
    def __init__(
        self, config_path: Path, *, clock: Clock | None = None, log_to_stderr: bool = True, record: Path | None = None
    ) -> None:
        self.config_path = Path(config_path)
        self.record = record  # a replay trace: agents then run one at a time so the trace is a sequence
        self.clock = clock or Clock()
        self.log_to_stderr = log_to_stderr
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.config: SiteConfig | None = None
        self.lock: InstanceLock | None = None

    # -- signals: set flags only ------------------------------------------------------------------------
    def _on_term(self, signum: int, frame: object) -> None:
        self._stop.set()

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload.set()

    def request_stop(self) -> None:
        self._stop.set()

    def run(self, *, max_seconds: float | None = None) -> int:
        """Run until SIGTERM/SIGINT (or `max_seconds`); returns the exit code."""
        config = load_config(self.config_path)
        self.config = config
        self.lock = InstanceLock(config.lock_path)
        self.lock.acquire()
        try:
            return self._run_locked(config, max_seconds)
        finally:
            self.lock.release()

    def _run_locked(self, config: SiteConfig, max_seconds: float | None) -> int:
        setup_logging(config.log_dir, config.daemon.log_level, config.daemon.log_json, stderr=self.log_to_stderr)
        secure_paths(config)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_term)
            signal.signal(signal.SIGINT, self._on_term)
            signal.signal(signal.SIGHUP, self._on_hup)
        daemon_id = f"{socket.gethostname()}:{os.getpid()}"
        store = restart_store(config, self.clock.now(), socket.gethostname())
        # a trace of every outside contact: the recording wraps the seams the site is built over
        recording = None if self.record is None else Recording.start(self.record, config, store, self.clock)
        site = daemon_site(config, store, self.clock, daemon_id, recording)
        ctx, agents = site.ctx, site.agents
        scheduler = BackgroundScheduler(
            executors={"default": DaemonThreadExecutor(1 if self.record else config.daemon.threads)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )
        for agent in agents:
            scheduler.add_job(
                agent.cycle, "interval", seconds=agent.interval, id=agent.name, name=agent.name, next_run_time=_now_dt()
            )
        ctx.wake = lambda name: _wake(scheduler, name)
        scheduler.start()
        log.info(
            "daemon %s started for site %s: %d agents (%s), db %s",
            daemon_id,
            config.site,
            len(agents),
            ", ".join(a.name for a in agents),
            config.db_path,
        )
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._stop.wait(0.2):
                if deadline is not None and time.monotonic() > deadline:
                    break
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_config(ctx, scheduler, agents)
        finally:
            code = self._drain(ctx, scheduler, site)
        return code

    def _reload_config(self, ctx: AgentContext, scheduler: BackgroundScheduler, agents: list[Agent]) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("SIGHUP: the new config is rejected, keeping the old one:\n%s", exc)
            return
        old = ctx.config
        if new.db_path != old.db_path or new.paths.work_dir != old.paths.work_dir:
            log.error(
                "SIGHUP: paths changed (%s); restart the daemon to move them; keeping the old config",
                new.paths.work_dir,
            )
            return
        sync_queues(ctx.store, new, self.clock.now())
        ctx.config = new
        self.config = new
        for agent in agents:
            scheduler.reschedule_job(agent.name, trigger="interval", seconds=agent.interval)
        log.info("SIGHUP: reloaded %s (%d queues)", self.config_path, len(new.queues))

    def _drain(self, ctx: AgentContext, scheduler: BackgroundScheduler, site: Site) -> int:
        timeout = float(ctx.config.daemon.stop_timeout)
        log.info("stopping: no new cycles; waiting up to %.0fs for running cycles", timeout)
        ctx.stop.set()
        scheduler.pause()
        done = threading.Event()

        def shutdown() -> None:
            scheduler.shutdown(wait=True)
            done.set()

        threading.Thread(target=shutdown, name="shutdown", daemon=True).start()
        finished = done.wait(timeout)
        if not finished:
            log.error("stopping: cycles still running after %.0fs; exiting anyway (their leases expire)", timeout)
        try:
            with ctx.store.write() as conn:
                released = release_all(conn, ctx.daemon_id + "/")
            log.info("stopping: released %d leases", released)
        except Exception:
            log.exception("stopping: could not release leases; they expire after daemon.lease_time")
        site.stop()
        ctx.store.close()
        log.info("stopped")
        return 0 if finished else 1


def secure_paths(config: SiteConfig) -> None:
    """The work dir, access points and logs 0700, the site's own files 0600 (see harvester_edge.filemodes);
    what an older version made looser is tightened here, at start, with a log line."""
    for folder in (config.paths.work_dir, config.access_points, config.log_dir):
        private_dir(folder)
    tightened = tighten_children(config.access_points)
    if tightened:
        log.warning(
            "tightened %d access points under %s to mode 700 (made by an older harvester-edge)",
            tightened,
            config.access_points,
        )
    tokens = config.central.tokens
    for path in (config.lock_path, tokens.token_file, tokens.key_file, tokens.secret_file):
        if path is not None:
            private_file(Path(path))


def _wake(scheduler: BackgroundScheduler, name: str) -> None:
    """Run agent `name`'s next cycle now (a cycle running now is not doubled: max_instances 1)."""
    try:
        scheduler.modify_job(name, next_run_time=_now_dt())
    except Exception as exc:  # stopping, or no such agent: the cycle comes at its interval
        log.debug("cannot wake agent %s: %s", name, exc)


def _now_dt() -> datetime:
    return datetime.now(UTC)


def daemonize(log_path: Path) -> bool:
    """Double fork into the background (cron mode). Returns True in the daemon, False in the caller."""
    if os.fork() > 0:
        return False
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    private_dir(log_path.parent)
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    return True
