"""Monitor pages and /metrics are built in reader processes, never on the API's event loop or its threads.

A page costs tens of milliseconds of Python (SQL, charts, templates). Built on the service's thread pool, a few
monitor readers took the GIL from the event loop that answers the API: at 200 clients with 10 % of them reading
pages, every API call waited (issue 15). Here a small pool of worker processes (spawned, not forked: the service
process has threads) builds and renders them instead: each has its own interpreter, its own SQLite connections
(read only, WAL: they never block the writer) and a lower CPU priority (nice), so the API keeps its core and a
burst of page views only queues behind the pool.

The caller (router.py) checks the token and makes the CSRF token on the event loop (cheap), then awaits `run`.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from harvester_edge.central.errors import CentralError, NotFound
from harvester_edge.central.service import CentralService
from harvester_edge.central.store import pg
from harvester_edge.central.store.database import Database
from harvester_edge.metrics import DatabaseCollector, TokenFileCollector

from . import pages
from .render import render

log = logging.getLogger(__name__)

PROCESSES = 1  # pages built at the same time; more readers queue
NICE = 19  # added to the reader processes' nice value: the API (and the daemon's agents) come first
SERVICES_KEPT = 4  # central DBs a reader process keeps connections to (tests open many)
REST = 1.0  # a reader process rests this many times as long as its last page took before it starts the next one

T = TypeVar("T")
_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _lower_priority() -> None:
    try:
        os.nice(NICE)
    except OSError as exc:  # not fatal: the pages are only less polite
        log.warning("monitor reader process %d: cannot lower its priority (%s)", os.getpid(), exc)


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                PROCESSES, mp_context=multiprocessing.get_context("spawn"), initializer=_lower_priority
            )
        return _pool


def shutdown() -> None:
    """Stop the reader processes (at exit; a later page starts them again)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown)


def _discard(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


async def run(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a reader process; a pool whose process died (killed, out of memory) is replaced once."""
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        pool = _get_pool()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            log.warning("monitor reader process died; starting new ones (attempt %d)", attempt)
            _discard(pool)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# -- what runs in a reader process ------------------------------------------------------------------------------
_services: dict[tuple[str, str | None, str | None], Any] = {}
_rest_until = 0.0  # when this reader process may start its next page


def _rest() -> float:
    """Wait out the rest after the previous page (REST): pages read at most about half the time, so there are
    moments with no reader in the central DB's WAL, when the writer can start it over (store/database.py's
    checkpointer); back to back, the WAL grew by tens of MB/s under load and every API write slowed. Returns the
    page's start."""
    pause = _rest_until - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    return time.monotonic()


def _rested(started: float) -> None:
    global _rest_until
    _rest_until = time.monotonic() + REST * (time.monotonic() - started)


def _service(central_db: str, pilot_log_dir: str | None, central_url: str | None = None) -> Any:
    """A CentralService on the central DB for reading only (its per-thread readers; no writer is started).
    central_url: its PostgreSQL database (central_db is then only where its files are: jedilogs)."""
    key = (central_db, pilot_log_dir, central_url)
    svc = _services.get(key)
    if svc is None:
        while len(_services) >= SERVICES_KEPT:
            _services.pop(next(iter(_services))).close()
        if central_url is not None:
            db: Database | pg.PgDatabase = pg.PgDatabase(central_url, Path(central_db).parent, pool_size=2)
        else:
            db = Database(Path(central_db))
        svc = _services[key] = CentralService(db)
        svc.pilot_log_dir = Path(pilot_log_dir) if pilot_log_dir else None
    return svc


def page(
    central_db: str,
    pilot_log_dir: str | None,
    harvester_db: Path | None,
    name: str,
    params: dict[str, str],
    now: float,
    ids: tuple[Any, ...],
    base: dict[str, Any],
    central_url: str | None = None,
) -> tuple[int, str]:
    """(HTTP status, HTML) of the page `name` (a build function of pages.py) rendered with `base` (refresh, path,
    CSRF field and token); an unknown id or a refused one is the error page (404, 400). central_url: the
    service's PostgreSQL database, if it has one."""
    build = getattr(pages, name)
    started = _rest()
    try:
        template, context = build(_service(central_db, pilot_log_dir, central_url), harvester_db, params, now, *ids)
        status = 200
    except NotFound as exc:
        template, context, status = "error.html", {"title": "not found", "message": str(exc)}, 404
    except CentralError as exc:
        template, context, status = "error.html", {"title": "refused", "message": str(exc)}, 400
    finally:
        _rested(started)
    return status, render(template, {**base, **context})


def stored_metrics(
    central_db: Path | None, harvester_db: Path | None, token_file: Path | None, central_url: str | None = None
) -> bytes:
    """The /metrics families read from the DB files and the token file (the in-process timings are added by the
    service itself: they live in its memory)."""
    started = _rest()
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DatabaseCollector(central_db, harvester_db, central_url=central_url))
        registry.register(TokenFileCollector(token_file))
        return generate_latest(registry)
    finally:
        _rested(started)
