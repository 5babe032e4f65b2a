"""What the daemon starts besides its agents: the embedded central service, its client, the batch plugins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvester_edge.agents.base import AgentContext

log = logging.getLogger(__name__)


@dataclass
class Services:
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    central: Any = None  # the EmbeddedCentral, when the service runs in this process

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:
                log.exception("stopping a service failed")


def make_plugins(ctx: AgentContext, runner: Any = None) -> dict[str, Any]:
    from harvester_edge.batch import load_plugin
    from harvester_edge.seams.commands import CommandRunner

    runner = runner or CommandRunner()
    return {queue.name: load_plugin(queue.batch)(queue, runner) for queue in ctx.config.queues}


def remote_transport(settings: Any, url: str, recorder: Any = None) -> Any:
    """The HTTP transport to the central service, with the x509 client certificate and CA bundle of the config."""
    from harvester_edge.seams.http import HttpTransport

    for name in ("cert_file", "key_file", "ca_bundle"):
        path = getattr(settings, name)
        if path is not None and not Path(path).exists():
            from harvester_edge.errors import ConfigError

            raise ConfigError(f"central.{name}: {path} does not exist (expected a PEM file)")
    cert = None
    if settings.cert_file is not None:
        cert = (
            str(settings.cert_file) if settings.key_file is None else (str(settings.cert_file), str(settings.key_file))
        )
    verify: bool | str = str(settings.ca_bundle) if settings.ca_bundle is not None else True
    return HttpTransport(url, timeout=float(settings.request_timeout), recorder=recorder, verify=verify, cert=cert)


def start_services(ctx: AgentContext, record: Path | str | None = None) -> Services:
    """Start the embedded central service (if configured), connect its client, load the batch plugins.

    `record`: a trace file; every outside contact (batch commands, HTTP, pilot files, cycle times) is written to it
    (harvester_edge.replay). The recording closes last, after the central service stopped.
    """
    from harvester_edge.central.client import CentralClient
    from harvester_edge.seams.commands import CommandRunner

    services = Services()
    recording = None
    if record is not None:
        from harvester_edge.replay.recorder import install

        recording = install(ctx, record)
        services.stoppers.append(recording.close)
    settings = ctx.config.central
    url, token, issuer = settings.url, None, None
    if settings.mode == "embedded":
        from harvester_edge.server import embedded_central

        central = embedded_central(settings)
        central.start()
        services.stoppers.append(central.stop)
        services.central = central
        url = central.url
        if central.authority is not None:
            # Token mode, same process: the daemon holds a key of its own (minted here, kid on every token) and the
            # credentials agent renews its token in-process before expiry (why not over HTTP: agents/credentials).
            # Its identity (token sub) is the site name: the harvester_id it sends with every call.
            from harvester_edge.agents.credentials import InProcessIssuer

            issuer = InProcessIssuer(central.authority, ctx.config.site)
            token = issuer.own_token(None, central.authority.clock())
    ctx.central = CentralClient(
        remote_transport(settings, url, recording.http if recording else None),
        token=token,
        token_file=None if token else settings.tokens.token_file,
        origin=settings.origin if settings.mode == "remote" else None,
    )
    if issuer is not None:
        issuer.store(ctx.central, token)
        ctx.central.issuer = issuer
    ctx.plugins = make_plugins(ctx, CommandRunner(recorder=recording.command if recording else None))
    return services
