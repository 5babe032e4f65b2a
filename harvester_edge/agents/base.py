"""The agent base: one `run_cycle(now)` step, scheduled by the daemon; exceptions are logged and survived.

Agents talk to each other only through database rows. Each agent's lease owner is "<daemon id>/<agent name>", so
a daemon releases exactly its own leases when it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from harvester_edge import metrics
from harvester_edge.batch import BatchPlugin
from harvester_edge.central.client import CentralClient
from harvester_edge.config import SiteConfig, WebhookConfig
from harvester_edge.seams.clock import Clock
from harvester_edge.seams.files import PilotFiles
from harvester_edge.seams.http import Transport
from harvester_edge.store import Store

log = logging.getLogger(__name__)


@dataclass
class AgentContext:
    """What every agent may use. `config` is swapped on SIGHUP; read it at the start of each cycle."""

    config: SiteConfig
    store: Store
    clock: Clock
    daemon_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    files: PilotFiles = field(default_factory=PilotFiles)  # the pilot-file seam (every access-point read/write)
    central: CentralClient | None = None  # every built site has one (harvester_edge.site); a test's context may not
    plugins: dict[str, BatchPlugin] = field(default_factory=dict)  # queue name -> its batch plugin
    stats: dict[str, CycleStats] = field(default_factory=dict)
    # webhook config -> the HTTP seam to it (harvester_edge.alerts.delivery); None: the real one, unrecorded
    webhooks: Callable[[WebhookConfig], Transport] | None = None
    # run an agent's next cycle now (the daemon's scheduler; agents/persistent.py wakes the feeder); None: no-op
    wake: Callable[[str], None] | None = None


@dataclass
class CycleStats:
    cycles: int = 0
    errors: int = 0
    last_duration: float = 0.0
    total_duration: float = 0.0
    last_error: str | None = None
    last_run: float | None = None
    last_ok: float | None = None  # when the last cycle that completed without an error started (alerts)


class Agent:
    name: ClassVar[str] = "agent"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.stats = ctx.stats.setdefault(self.name, CycleStats())

    @property
    def owner(self) -> str:
        return f"{self.ctx.daemon_id}/{self.name}"

    @property
    def central(self) -> CentralClient:
        """The site's central client: every built site has one (harvester_edge.site); a test's context may not."""
        if self.ctx.central is None:
            raise RuntimeError(f"{self.name}: this agent context has no central client")
        return self.ctx.central

    @property
    def interval(self) -> float:
        return float(getattr(self.ctx.config.agents, self.name))

    def run_cycle(self, now: float) -> None:
        raise NotImplementedError

    def cycle(self) -> None:
        """One scheduled run: never raises (the scheduler would drop the job), records duration and errors."""
        if self.ctx.stop.is_set():
            return
        started = time.perf_counter()
        now = self.ctx.clock.now()
        try:
            self.run_cycle(now)
            self.stats.last_ok = now
        except Exception as exc:  # an agent cycle must never kill the daemon
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s cycle failed; it runs again in %.1fs", self.name, self.interval)
        finally:
            took = time.perf_counter() - started
            self.stats.cycles += 1
            self.stats.last_duration = took
            self.stats.total_duration += took
            self.stats.last_run = now
            metrics.observe_cycle(self.name, took)
