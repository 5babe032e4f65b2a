"""Alerts in process: the site as the daemon wires it (build_site) over a real SQLite store, the real alerts agent,
the real HTTP seam to a real webhook receiver on 127.0.0.1 (tests/webhook_receiver.py); the central service and
the batch system are doubles (tests/doubles.py), the clock a FakeClock the test moves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from doubles import NOW, BatchRunner, FakeClock, FakeTransport
from harvester_edge.agents.alerter import Alerter
from harvester_edge.agents.base import AgentContext
from harvester_edge.alerts.rules import RULES
from harvester_edge.config import SiteConfig, load_config
from harvester_edge.seams.files import DirectFiles
from harvester_edge.site import build_site, sync_queues
from harvester_edge.store import Store, open_store
from webhook_receiver import Receiver

QUEUE = {"name": "q", "batch": "slurm", "partition": "debug", "launcher": "srun", "walltime_max": 3600}
# the rules of a test are the ones it names: the others stay quiet (agent_stalled would fire as the clock jumps)
QUIET = {name: {"enabled": False} for name in RULES}


@dataclass
class AlertSite:
    root: Path
    config: SiteConfig
    ctx: AgentContext
    clock: FakeClock
    transport: FakeTransport
    agent: Alerter

    @property
    def store(self) -> Store:
        return self.ctx.store

    def cycle(self, seconds: float = 0.0) -> None:
        """Move the clock, then one cycle as the daemon runs it (Agent.cycle: it must never raise)."""
        self.clock.advance(seconds)
        self.agent.cycle()

    def failed_workers(self, n: int, queue: str = "q", state: str = "failed") -> None:
        """n workers of `queue` that ended now in `state` (failed ones with an error: refused submissions)."""
        now = self.clock.now()
        with self.store.write() as conn:
            for _ in range(n):
                cur = conn.execute(
                    "INSERT INTO workers (queue, state, job_name, access_point, nodes, ranks_per_node, walltime,"
                    " error, ended_at, created_at, updated_at) VALUES (?, ?, ?, '', 1, 1, 60, ?, ?, ?, ?)",
                    (queue, state, f"tmp-{now}-{_}-{state}", "sbatch: error: invalid account", now, now, now),
                )
                conn.execute("UPDATE workers SET job_name = ? WHERE id = ?", (f"w{cur.lastrowid}", cur.lastrowid))

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self.store.query(sql, params)]

    def restart(self) -> AlertSite:
        """A new daemon over the same DB and config: new store, context and agent (nothing kept in memory)."""
        self.store.close()
        return AlertSite(*_context(self.root, self.config, self.clock, self.transport))


def _context(root: Path, config: SiteConfig, clock: FakeClock, transport: FakeTransport) -> tuple:
    store = open_store(config.db_path)
    sync_queues(store, config, clock.now())
    ctx = build_site(config, BatchRunner(), transport, DirectFiles(), clock, store=store, daemon_id="alerts:1").ctx
    return root, config, ctx, clock, transport, Alerter(ctx)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def make_alert_site(tmp_path: Path) -> Iterator[Callable[..., AlertSite]]:
    """make_alert_site(rules={...}, webhooks=[...], **top) -> AlertSite; rules not named are disabled."""
    made: list[AlertSite] = []

    def make(rules: dict | None = None, webhooks: list[dict] | None = None, **top: Any) -> AlertSite:
        root = tmp_path / f"site{len(made)}"
        root.mkdir()
        path = root / "site.yaml"
        data = {
            "site": "unit",
            "central": {"mode": "remote", "url": "http://central.test", "trusted": True},
            "queues": [QUEUE],
            "paths": {"work_dir": str(root / "work")},
            "alerts": {"webhooks": webhooks or [], "rules": {**QUIET, **(rules or {})}},
            **top,
        }
        path.write_text(yaml.safe_dump(data))
        config = load_config(path)
        site = AlertSite(*_context(root, config, FakeClock(NOW), FakeTransport()))
        made.append(site)
        return site

    yield make
    for site in made:
        site.store.close()
