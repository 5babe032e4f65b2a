"""Alerts: evaluate the alert rules, record state changes (with their messages) and deliver due messages.

Its own agent, on its own interval (agents.alerts), so a slow or failing webhook never holds another agent's
cycle: every delivery is bounded by the webhook's timeout, and a failing webhook waits its backoff
(harvester_edge.alerts.delivery). Nothing here raises into the daemon beyond what Agent.cycle already survives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from harvester_edge.agents.base import Agent
from harvester_edge.alerts import rules, tracker
from harvester_edge.alerts.delivery import Deliverer
from harvester_edge.central.store import database, pg
from harvester_edge.config import SiteConfig
from harvester_edge.store import alerts as alert_rows

log = logging.getLogger(__name__)


@contextmanager
def central_db(config: SiteConfig) -> Iterator[Any]:
    """A read-only connection to the embedded central service's DB (its SQLite file or its PostgreSQL database), or
    None: a remote service (its DB is not ours to read) or a file not made yet. Raises when it cannot be opened."""
    db = config.central.db
    if config.central.mode != "embedded" or db is None or not (pg.is_postgresql_url(db) or Path(db).exists()):
        yield None
        return
    with database.reading(db) as conn:
        yield conn


class Alerter(Agent):
    name = "alerts"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.started: float | None = None
        self.deliverer = Deliverer(ctx.store, ctx.webhooks)
        self.resume_outage()  # before any agent's first call

    def run_cycle(self, now: float) -> None:
        if self.started is None:
            self.started = now
        config = self.ctx.config
        self.evaluate(config, now)
        self.deliverer.deliver(config.alerts, now)

    def resume_outage(self) -> None:
        """After a restart, an outage the alerts table still shows as firing goes on until the service answers (a
        fresh process has not seen it begin; without this its first failed call would restart the count)."""
        row = alert_rows.by_key(self.ctx.store.connection()).get(("central_unreachable", ""))
        if row is not None and row["state"] in (alert_rows.FIRING, alert_rows.HOLDING) and self.ctx.central is not None:
            began = float(row["since"]) - float(row["threshold"] or 0)
            self.ctx.central.reach.resume(began, "unreachable before the daemon restarted")

    def evaluate(self, config: SiteConfig, now: float) -> list[tracker.Change]:
        inputs = rules.Inputs(
            config=config,
            conn=self.ctx.store.connection(),
            now=now,
            started=self.started if self.started is not None else now,
            reach=self.ctx.central.reach if self.ctx.central is not None else None,
            stats=self.ctx.stats,
            # a remote service: task_failed and credential_expiring read its API and the token in use instead
            remote=self.ctx.central if config.central.mode == "remote" else None,
        )
        with ExitStack() as stack:
            try:
                inputs = replace(inputs, central_db=stack.enter_context(central_db(config)))
            except Exception as exc:  # the rules that need it are left as they are (None)
                log.warning("alerts: the central DB is not readable (%s); task and key alerts keep their state", exc)
            evaluated = rules.evaluate(inputs)
        with self.ctx.store.write() as conn:
            changes = tracker.apply(conn, config, evaluated, now)
            keep = float(config.daemon.keep_history)
            alert_rows.prune_resolved(conn, now - keep)
            alert_rows.prune_messages(conn, now - keep)
        for change in changes:
            log.warning(
                "alert %s%s %s: %s",
                change.rule,
                f"[{change.key}]" if change.key else "",
                change.state,
                change.summary,
            )
        return changes
