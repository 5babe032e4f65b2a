"""One agent, one cycle, no daemon: a real SQLite store in tmp_path, the real batch plugin over a BatchRunner with
canned sbatch/squeue output, the real CentralClient over a FakeTransport with canned PanDA answers, a FakeClock, and
access points in tmp_path (the pilot's files are written with jumbo.protocol, as the pilot writes them).

The context is built in ONE place (`make_context`), and rows are planted and read through ONE pair of helpers
(`plant`, `read`): the SQL of the tests lives here, so a change of the site wiring or of the store's functions
touches this file only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import yaml

from doubles import NOW, BatchRunner, FakeClock, FakeTransport, central_client, panda_job
from harvester_edge.agents.base import Agent, AgentContext
from harvester_edge.batch import load_plugin
from harvester_edge.config import SiteConfig, load_config
from harvester_edge.outbox import enqueue
from harvester_edge.seams.files import DirectFiles
from harvester_edge.site import build_site, sync_queues
from harvester_edge.store import Store, open_store, transition

QUEUE = {"name": "q", "batch": "slurm", "partition": "debug", "launcher": "srun", "walltime_max": 3600}


def make_context(config: SiteConfig, runner: BatchRunner, transport: FakeTransport, clock: FakeClock) -> AgentContext:
    """The site as the daemon wires it (build_site), with the doubles for its seams (the pilot files: the real file
    system)."""
    store = open_store(config.db_path)
    sync_queues(store, config, clock.now())
    return build_site(config, runner, transport, DirectFiles(), clock, store=store, daemon_id="unit:1").ctx


@dataclass
class Site:
    root: Path
    config: SiteConfig
    ctx: AgentContext
    runner: BatchRunner
    transport: FakeTransport
    clock: FakeClock

    @property
    def store(self) -> Store:
        return self.ctx.store

    def agent(self, cls: type[Agent]) -> Agent:
        return cls(self.ctx)

    def cycle(self, agent: Agent) -> None:
        """One cycle at the clock's time; an exception fails the test (the daemon's cycle() would only log it)."""
        agent.run_cycle(self.clock.now())

    # -- rows ---------------------------------------------------------------------------------------------------
    def job(self, panda_id: int, state: str = "running", **cols: Any) -> int:
        spec = cols.pop("spec", None) or panda_job(panda_id)
        row = {
            "panda_id": panda_id,
            "task_id": spec["taskID"],
            "jobset_id": spec.get("jobsetID"),
            "queue": "q",
            "state": state,
            "spec": json.dumps(spec),
            "events_total": spec.get("nEvents"),
            "seconds_per_event": spec.get("secondsPerEvent"),
            "created_at": self.clock.now(),
            "updated_at": self.clock.now(),
            **cols,
        }
        plant(self.store, "jobs", row)
        return panda_id

    def worker(self, worker_id: int, state: str, jobs: tuple[int, ...] = (), **cols: Any) -> Path:
        """A worker row with its access point (a real folder) linked to `jobs`; returns the access point."""
        ap = self.config.access_points / f"w{worker_id:06d}"
        ap.mkdir(parents=True, exist_ok=True)
        row = {
            "id": worker_id,
            "queue": "q",
            "state": state,
            "job_name": f"edge-unit-{worker_id}",
            "access_point": str(ap),
            "nodes": 1,
            "ranks_per_node": 1,
            "walltime": 3600,
            "created_at": self.clock.now(),
            "updated_at": self.clock.now(),
            **cols,
        }
        plant(self.store, "workers", row)
        for panda_id in jobs:
            plant(self.store, "job_workers", {"panda_id": panda_id, "worker_id": worker_id})
        return ap

    def ranges(self, panda_id: int, specs: list[dict], state: str = "fetched", worker_id: int | None = None) -> None:
        for spec in specs:
            row = {
                "range_id": spec["eventRangeID"],
                "panda_id": panda_id,
                "worker_id": worker_id,
                "state": state,
                "first_event": spec["startEvent"],
                "last_event": spec["lastEvent"],
                "spec": json.dumps(spec),
                "updated_at": self.clock.now(),
            }
            plant(self.store, "event_ranges", row)

    def message(self, kind: str, payload: Any) -> int:
        with self.store.write() as conn:
            return enqueue(conn, kind, payload, self.clock.now())

    def move(self, ids: list[Any], src: Enum, dst: Enum) -> None:
        with self.store.write() as conn:
            transition(conn, ids, src, dst, now=self.clock.now(), reason="test")

    def read(self, table: str, **where: Any) -> list[dict[str, Any]]:
        return read(self.store, table, where)

    def one(self, table: str, **where: Any) -> dict[str, Any]:
        rows = self.read(table, **where)
        assert len(rows) == 1, f"expected one {table} row for {where}, found {len(rows)}"
        return rows[0]


def plant(store: Store, table: str, row: dict[str, Any]) -> None:
    """The one place that writes raw rows (the state a decision depends on, which no public step reaches)."""
    with store.write() as conn:
        conn.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
        )


def read(store: Store, table: str, where: dict[str, Any]) -> list[dict[str, Any]]:
    """The one place that reads raw rows back, as dicts, ordered by their first column (the key)."""
    sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(f"{k} = ?" for k in where) if where else "")
    return [dict(r) for r in store.query(sql + " ORDER BY 1", tuple(where.values()))]


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """make_site(queues=[...], central={...}, daemon={...}) -> Site; the default: one Slurm queue "q"."""
    made: list[Site] = []

    def make(
        queues: list[dict] | None = None,
        central: dict | None = None,
        daemon: dict | None = None,
        paths: dict | None = None,
        **queue: Any,
    ) -> Site:
        root = tmp_path / f"site{len(made)}"
        root.mkdir()
        path = root / "site.yaml"
        data = {
            "site": "unit",
            "central": central or {"mode": "remote", "url": "http://central.test", "trusted": True},
            "queues": queues or [{**QUEUE, **queue}],
            "paths": {"work_dir": str(root / "work"), **(paths or {})},
            "daemon": daemon or {},
        }
        path.write_text(yaml.safe_dump(data))
        config = load_config(path)
        clock, runner, transport = FakeClock(NOW), BatchRunner(), FakeTransport()
        site = Site(root, config, make_context(config, runner, transport, clock), runner, transport, clock)
        made.append(site)
        return site

    yield make
    for site in made:
        site.store.close()


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()
