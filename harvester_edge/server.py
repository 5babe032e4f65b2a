"""The central service as the appliance serves it: the central app with the web monitor mounted beside it.

harvester_edge.central knows nothing of the monitor (it only accepts `mounts`, callables that add routes to its
app); the monitor (harvester_edge.web) reads the central service. This module, above both, composes them: the
daemon's embedded service (harvester_edge.site), `harvester-edge central serve`, and tests that want the whole
HTTP surface (/api/v1, /server/panda, /docs, /monitor, /metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from fastapi import FastAPI

from harvester_edge.central.app import Mount, create_app, create_asgi
from harvester_edge.central.guard import Guard
from harvester_edge.central.server import EmbeddedCentral, serve, serve_workers
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.central.tokens import TokenAuthority
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.web.router import monitor_router


def mount_monitor(app: FastAPI) -> None:
    """The web monitor (/monitor) and Prometheus /metrics on the central service's app."""
    app.include_router(monitor_router(app))


MOUNTS: tuple[Mount, ...] = (mount_monitor,)


def central_app(settings: Any, service: CentralService, authority: TokenAuthority | None = None) -> FastAPI:
    """The central service's FastAPI app with the monitor beside it."""
    return create_app(settings, service, authority, MOUNTS)


def central_asgi(settings: Any, service: CentralService, authority: TokenAuthority | None = None) -> Guard:
    """The ASGI stack the server runs (hot path, guard), with the monitor."""
    return create_asgi(settings, service, authority, MOUNTS)


def embedded_central(settings: CentralSettings, clock: Callable[[], float] = time.time) -> EmbeddedCentral:
    """The central service on a thread of this process, with the monitor (start() it)."""
    return EmbeddedCentral(settings, clock, MOUNTS)


def serve_central(
    settings: CentralSettings, host: str | None = None, port: int | None = None, workers: int = 1
) -> None:
    """`harvester-edge central serve`: the central service with the monitor until SIGINT/SIGTERM, in this process
    or (`workers` > 1, PostgreSQL only) in that many forked processes sharing the listening socket."""
    update = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update=update) if update else settings

    def ready(url: str) -> None:
        click.echo(f"central service listening on {url} (OpenAPI: {url}/docs)")

    try:
        if workers == 1:
            serve(settings, on_ready=ready, mounts=MOUNTS)
        else:
            serve_workers(settings, workers, on_ready=ready, mounts=MOUNTS)
    except HarvesterEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
