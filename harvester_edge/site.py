"""One wiring of a site: the agents, their context, the central client and the batch plugins, over four seams.

`build_site(config, runner, transport, files, clock, ...)` is the only place a site is put together (as Balsam's
SiteConfig builds its services); every outside contact passes through the four seams it is given:
- `runner`: batch commands (harvester_edge.seams.commands.CommandRunner or a stand-in),
- `transport`: HTTP to the central service (harvester_edge.seams.http.Transport: HttpTransport or a stand-in),
- `files`: the backend of the pilot-file seam (harvester_edge.seams.files.DirectFiles or a stand-in),
- `clock`: time (harvester_edge.seams.clock.Clock or a virtual one).
The daemon passes the real ones (`daemon_site`), offline replay ones that answer from a trace, the scale
simulation synthetic ones; a recording wraps whichever it is given (harvester_edge.replay.recorder). Nothing is
swapped after the site is built, and no seam is global.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from harvester_edge.agents import build_agents
from harvester_edge.agents.base import Agent, AgentContext
from harvester_edge.agents.credentials import InProcessIssuer
from harvester_edge.alerts.delivery import WebhookTransport
from harvester_edge.batch import BatchPlugin, load_plugin
from harvester_edge.central.client import CentralClient
from harvester_edge.central.server import EmbeddedCentral
from harvester_edge.central.settings import CentralSettings
from harvester_edge.config import SiteConfig, WebhookConfig
from harvester_edge.errors import ConfigError
from harvester_edge.seams.clock import Clock
from harvester_edge.seams.commands import CommandRunner
from harvester_edge.seams.files import DirectFiles, FilesBackend, PilotFiles
from harvester_edge.seams.http import HttpTransport, Transport
from harvester_edge.server import embedded_central
from harvester_edge.store import Store, meta, open_store, queues, release_all

log = logging.getLogger(__name__)


class SeamWrappers(Protocol):
    """What wraps the seams of a site before it is built (harvester_edge.replay.recorder.Recording)."""

    def runner(self, inner: CommandRunner) -> CommandRunner: ...
    def transport(self, inner: Transport) -> Transport: ...
    def files(self, inner: FilesBackend) -> FilesBackend: ...
    def clock(self, inner: Clock) -> Clock: ...
    def close(self) -> None: ...


@dataclass
class Site:
    """A built site: its context (what every agent uses), its agents, what to stop when it ends."""

    ctx: AgentContext
    agents: list[Agent]
    central: EmbeddedCentral | None = None  # the embedded service, when it runs in this process
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        """Stop in reverse order of start: the central service before the recording closes."""
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception:
                log.exception("stopping a service failed")


def make_plugins(config: SiteConfig, runner: CommandRunner, files: PilotFiles) -> dict[str, BatchPlugin]:
    """One batch plugin per queue, each over the site's command runner and pilot-file seam."""
    return {queue.name: load_plugin(queue.batch)(queue, runner, files) for queue in config.queues}


def build_site(
    config: SiteConfig,
    runner: CommandRunner,
    transport: Transport,
    files: FilesBackend,
    clock: Clock,
    *,
    store: Store,
    daemon_id: str,
    issuer: InProcessIssuer | None = None,
    webhooks: Callable[[WebhookConfig], Transport] | None = None,
) -> Site:
    """The site's context and agents over the given seams. `issuer`: the embedded service's token issuer (token
    mode, same process: the credentials agent renews the daemon's token in-process, see agents/credentials).
    `webhooks`: the HTTP seam to each alert webhook (default: the real one, harvester_edge.alerts.delivery)."""
    settings = config.central
    token = issuer.own_token(None, issuer.authority.clock()) if issuer is not None else None
    central = CentralClient(
        transport,
        token=token,
        token_file=None if token else settings.tokens.token_file,
        origin=settings.origin if settings.mode == "remote" else None,
    )
    central.reach.clock = clock.now
    if issuer is not None and token is not None:
        issuer.store(central, token)
        central.issuer = issuer
    pilot_files = PilotFiles(files)
    ctx = AgentContext(
        config=config,
        store=store,
        clock=clock,
        daemon_id=daemon_id,
        files=pilot_files,
        central=central,
        plugins=make_plugins(config, runner, pilot_files),
        webhooks=webhooks,
    )
    return Site(ctx=ctx, agents=build_agents(ctx))


def recorded_webhooks(recording: SeamWrappers | None) -> Callable[[WebhookConfig], Transport] | None:
    """With a recording, the alert webhooks' calls go into the trace too (under the webhook's name, not its URL)."""
    if recording is None:
        return None
    rec = recording

    def transport(hook: WebhookConfig) -> Transport:
        return rec.transport(WebhookTransport(hook))

    return transport


def remote_transport(settings: CentralSettings, url: str) -> HttpTransport:
    """The HTTP transport to the central service, with the x509 client certificate and CA bundle of the config."""
    for name in ("cert_file", "key_file", "ca_bundle"):
        path = getattr(settings, name)
        if path is not None and not Path(path).exists():
            raise ConfigError(f"central.{name}: {path} does not exist (expected a PEM file)")
    cert = None
    if settings.cert_file is not None:
        cert = (
            str(settings.cert_file) if settings.key_file is None else (str(settings.cert_file), str(settings.key_file))
        )
    verify: bool | str = str(settings.ca_bundle) if settings.ca_bundle is not None else True
    return HttpTransport(url, timeout=float(settings.request_timeout), verify=verify, cert=cert)


def daemon_site(
    config: SiteConfig, store: Store, clock: Clock, daemon_id: str, recording: SeamWrappers | None = None
) -> Site:
    """The daemon's site: the embedded central service started (if configured), the real seams, the agents.

    `recording` (the daemon's --record: harvester_edge.replay.recorder.Recording) wraps every seam (batch commands,
    HTTP, pilot files, cycle times) and is closed last, after the central service stopped."""
    stoppers: list[Callable[[], None]] = []
    runner: CommandRunner = CommandRunner()
    files: FilesBackend = DirectFiles()
    if recording is not None:
        stoppers.append(recording.close)
        runner, files, clock = recording.runner(runner), recording.files(files), recording.clock(clock)
    settings = config.central
    url, issuer, central = settings.url, None, None
    try:
        if settings.mode == "embedded":
            central = embedded_central(settings)
            central.start()
            stoppers.append(central.stop)
            url = central.url
            if central.authority is not None:
                # Token mode, same process: the daemon holds a key of its own (minted here, kid on every token).
                # Its identity (token sub) is the site name: the harvester_id it sends with every call.
                issuer = InProcessIssuer(central.authority, config.site)
        if url is None:  # unreachable: the config requires central.url with mode remote; a started service has one
            raise ConfigError("central.url: no URL of the central service (mode remote needs one)")
        transport: Transport = remote_transport(settings, url)
        if recording is not None:
            transport = recording.transport(transport)
        site = build_site(
            config,
            runner,
            transport,
            files,
            clock,
            store=store,
            daemon_id=daemon_id,
            issuer=issuer,
            webhooks=recorded_webhooks(recording),
        )
    except BaseException:
        for stop in reversed(stoppers):  # what started before the failure
            stop()
        raise
    site.central = central
    site.stoppers = stoppers
    return site


def sync_queues(store: Store, config: SiteConfig, now: float) -> None:
    """The queues table mirrors the config (workers and jobs reference it); a removed queue's rows stay. The archive
    folder is noted beside them, for the monitor, which reads the DB and not the config."""
    with store.write() as conn:
        for q in config.queues:
            queues.upsert(conn, q.name, q.batch, now)
            queues.set_pledge(conn, q.name, q.cores_per_node, q.pledged_cores, q.opportunistic)
        meta.set_archive_dir(conn, str(config.paths.archives) if config.paths.archives else None)


def restart_store(
    config: SiteConfig, now: float, host: str, factory: type[sqlite3.Connection] = sqlite3.Connection
) -> Store:
    """What a daemon does with its database when it (re)starts, before its site is built: open and migrate it, free
    the leases an earlier daemon on this host left (it is dead: this one holds the instance lock), mirror the queues.
    The daemon and the scale simulation's restarts after a kill (harvester_edge.replay.chaos) both start here."""
    store = open_store(config.db_path, config.daemon.on_network_fs, factory)
    try:
        with store.write() as conn:  # leases of an earlier daemon on this host that died are free at once
            released = release_all(conn, f"{host}:")
        if released:
            log.info("released %d leases left by an earlier daemon on this host", released)
        sync_queues(store, config, now)
    except BaseException:
        store.close()
        raise
    return store
