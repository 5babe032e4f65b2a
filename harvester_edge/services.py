"""What the daemon starts besides its agents: the embedded central service, its client, the batch plugins."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from harvester_edge.agents.base import AgentContext

log = logging.getLogger(__name__)


@dataclass
class Services:
    stoppers: list[Callable[[], None]] = field(default_factory=list)

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


def start_services(ctx: AgentContext) -> Services:
    """Start the embedded central service (if configured), connect its client, load the batch plugins."""
    services = Services()
    settings = ctx.config.central
    url = settings.url
    if settings.mode == "embedded":
        from harvester_edge.central.server import EmbeddedCentral

        central = EmbeddedCentral(settings)
        central.start()
        services.stoppers.append(central.stop)
        url = central.url
        log.info("embedded central service listening at %s (trusted=%s)", url, settings.trusted)
    from harvester_edge.central.client import CentralClient

    ctx.central = CentralClient.from_settings(settings, url)
    ctx.plugins = make_plugins(ctx)
    return services
