"""Drive the real agents at virtual time against a synthetic site (synthetic.py): the scale simulation, and the
recorder of traces built from documented outputs (the LSF trace of the tests).

The loop is the daemon's schedule without threads or sleeping: each agent runs when it is due (ties in the
daemon's agent order), the clock jumps to that time, the synthetic world moves forward to it first.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from harvester_edge.config import SiteConfig
from harvester_edge.replay.chaos import Chaos, Incarnation, accounting
from harvester_edge.replay.recorder import Recording
from harvester_edge.replay.replayer import VirtualClock
from harvester_edge.replay.synthetic import Behaviour, SyntheticBatch, SyntheticTransport, SyntheticWorld
from harvester_edge.seams.clock import Clock
from harvester_edge.seams.commands import CommandRunner
from harvester_edge.seams.files import FilesBackend
from harvester_edge.seams.http import Transport
from harvester_edge.site import build_site, restart_store
from harvester_edge.store import Store
from harvester_edge.store import db as store_db

START = 1_800_000_000.0
INTERVALS = {
    "fetcher": 30,
    "submitter": 5,
    "monitor": 10,
    "feeder": 10,
    "propagator": 10,
    "sweeper": 60,
    "credentials": 300,
}


DAY = 86400.0
STEADY_INTERVALS = {name: 6 * every for name, every in INTERVALS.items()}  # 30 virtual days in minutes, not hours
BOOK_TABLES = ("jobs", "workers", "job_workers", "event_ranges", "outbox", "state_history")


def site_config(
    work_dir: Path,
    batch: str = "slurm",
    max_running: int = 1000,
    max_queued: int = 500,
    intervals: dict | None = None,
    keep_history: float | None = None,
    walltime_max: int = 180,
) -> SiteConfig:
    """A one-queue site whose workers are 1 node x 1 rank for up to `walltime_max` seconds (3 minutes: about 14
    ranges of 10 s each, the pilot draining 30 s before the end)."""
    return SiteConfig.model_validate(
        {
            "site": "sim",
            "central": {"mode": "embedded", "trusted": True},
            "queues": [
                {
                    "name": "normal",
                    "batch": batch,
                    "partition": "normal",
                    "nodes_min": 1,
                    "nodes_max": 1,
                    "ranks_per_node": 1,
                    "cores_per_node": 1,
                    "walltime_min": 60,
                    "walltime_max": walltime_max,
                    "max_running_workers": max_running,
                    "max_queued_workers": max_queued,
                    "launcher": "none",
                    "drain_warning": 30,
                }
            ],
            "paths": {"work_dir": str(work_dir)},
            "agents": intervals or INTERVALS,
            "daemon": {
                "lease_time": 300,
                "cleanup_delay": 600,
                "heartbeat_timeout": 1800,
                **({} if keep_history is None else {"keep_history": keep_history}),
            },
        }
    )


@dataclass
class AgentFigures:
    cycles: int = 0
    cpu: float = 0.0
    walls: list = field(default_factory=list)


@dataclass
class SimResult:
    workers: int
    ranges_done: int
    ranges_total: int
    virtual_seconds: float
    real_seconds: float
    harvester_cpu: float
    world_cpu: float
    db_bytes: int
    agents: dict[str, AgentFigures]
    chaos: dict[str, Any] | None = None  # kills and the lost/doubled accounting (a run with --kills)
    days: list[dict[str, Any]] = field(default_factory=list)  # book size at each virtual day (see book_size)
    max_running: int = 0  # the queue's max_running_workers (the run's concurrency)

    def row(self) -> dict[str, Any]:
        walls = [w for a in self.agents.values() for w in a.walls]
        chaos = {"chaos": self.chaos} if self.chaos is not None else {}
        return {
            "workers": self.workers,
            "ranges_done": self.ranges_done,
            "ranges_total": self.ranges_total,
            "virtual_s": round(self.virtual_seconds),
            "real_s": round(self.real_seconds, 2),
            "harvester_cpu_s": round(self.harvester_cpu, 2),
            "cpu_ms_per_worker": round(1000 * self.harvester_cpu / max(1, self.workers), 3),
            # the shaper gives longer workers to bigger tasks (more ranges each): per range is the unit of work
            "cpu_ms_per_range": round(1000 * self.harvester_cpu / max(1, self.ranges_done), 4),
            # the work per worker, which cpu_ms_per_worker compares across sizes (the same at each: scale_point)
            "ranges_per_worker": round(self.ranges_done / max(1, self.workers), 2),
            "max_running": self.max_running,
            "db_mb": round(self.db_bytes / 1e6, 2),
            "cycle_ms_median": round(1000 * statistics.median(walls), 3) if walls else 0.0,
            "cycle_ms_p99": round(1000 * statistics.quantiles(walls, n=100)[98], 1) if len(walls) > 1 else 0.0,
            "cycle_ms_max": round(1000 * max(walls), 1) if walls else 0.0,
            "cycles": sum(a.cycles for a in self.agents.values()),
            "per_agent_cpu_s": {n: round(a.cpu, 2) for n, a in self.agents.items()},
            **chaos,
            **({"days": self.days} if self.days else {}),
        }


class Simulation:
    """A site in `work_dir` with the real store, agents and plugins over synthetic seams (harvester_edge.site);
    `record`: a trace, written by wrapping those seams. `transport`: another HTTP seam than the synthetic central
    service (a real server's code: tests/replay/test_remote_record.py)."""

    def __init__(
        self,
        work_dir: Path,
        behaviour: Behaviour,
        config: SiteConfig | None = None,
        record: Path | None = None,
        tick: float = 10.0,
        transport: Transport | None = None,
        kills: int = 0,
        kill_seed: int = 1,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.config = config or site_config(self.work_dir)
        self.world = SyntheticWorld(behaviour)
        self.tick = tick
        self.clock = VirtualClock(START)
        self.world.now = START
        self.batch = SyntheticBatch(self.world)
        self.http: Transport = transport if transport is not None else SyntheticTransport(self.world.central)
        # `kills`: the daemon is killed that many times, SIGKILL-like, and restarted (harvester_edge.replay.chaos)
        self.chaos: Chaos | None = None
        self.restart_rng = random.Random(kill_seed)
        if kills:
            if record is not None:
                raise ValueError("a recorded simulation cannot have kills (the trace of a killed daemon stops)")
            central = self.world.central
            self.chaos = Chaos(kills, kill_seed, lambda: len(central.finished) / central.b.ranges, self.clock.now)
        self.recording: Recording | None = None
        self.incarnation: Incarnation | None = None
        self.store = self.start_daemon(START, record)
        self.figures = {a.name: AgentFigures() for a in self.agents}

    def start_daemon(self, now: float, record: Path | None = None) -> Store:
        """Build a daemon from the database file through the daemon's own restart path; with chaos, on a thread of
        its own whose seams and statements are kill points."""
        n = 0 if self.incarnation is None else self.incarnation.number + 1
        factory = sqlite3.Connection if self.chaos is None else self.chaos.connection_class()
        store = restart_store(self.config, now, "sim", factory)
        runner: CommandRunner = self.batch
        http, files, clock = self.http, cast(FilesBackend, self.world), cast(Clock, self.clock)
        if record is not None:
            self.recording = Recording.start(record, self.config, store, self.clock)
            runner, http = self.recording.runner(runner), self.recording.transport(http)
            files, clock = self.recording.files(files), self.recording.clock(clock)
        if self.chaos is not None:
            runner, http, files = self.chaos.runner(runner), self.chaos.transport(http), self.chaos.files(files)
            self.incarnation = self.chaos.current = Incarnation(n)
        self.site = build_site(self.config, runner, http, files, clock, store=store, daemon_id=f"sim:{n}")
        self.ctx = self.site.ctx
        self.agents = self.site.agents
        return store

    def kill_and_restart(self, now: float) -> float:
        """The daemon was killed: its connections closed uncommitted, its memory dropped; a new one starts like
        cron would start it, after a seeded pause in which the world goes on. Returns the restart time."""
        self.store.close()  # the dead daemon's open transaction is rolled back by SQLite, never committed
        restart = now + self.restart_rng.uniform(5.0, 60.0)
        self.world.advance(restart)
        self.clock.set(restart)
        self.store = self.start_daemon(restart)
        return restart

    def done(self) -> bool:
        """Every range finished, or out of attempts once nothing is ready or held (the task is over: a run of a
        million ranges has some that failed five times), and no batch job left."""
        central = self.world.central
        if self.world.running:
            return False
        if len(central.finished) >= central.total_ranges:
            return True
        if central.ready or any(central.held.values()):
            return False
        return len(central.finished) + central.given_up() >= central.total_ranges

    def book_size(self, day: int) -> dict[str, Any]:
        """The DB at a virtual day: file bytes (db + WAL), free pages (reused by SQLite; no auto/incremental
        vacuum) and rows per bookkeeping table."""
        db = self.config.db_path
        conn = self.store.connection()
        return {
            "day": day,
            "db_mb": round(sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists()) / 1e6, 3),
            "free_pages": store_db.free_pages(conn),
            "rows": store_db.row_counts(conn, BOOK_TABLES),
            "ranges_done": len(self.world.central.finished),
        }

    def run(self, max_virtual: float = 30 * 86400.0, stall: float = 6 * 3600.0, daily: bool = False) -> SimResult:
        """`daily`: the book's size at the end of each virtual day goes into the result (SimResult.days)."""
        started = time.perf_counter()
        days: list[dict[str, Any]] = []
        due = {a.name: START for a in self.agents}
        order = {a.name: i for i, a in enumerate(self.agents)}
        by_name = {a.name: a for a in self.agents}
        last_tick = START
        t = START
        progress, progress_at = -1, START
        try:
            while True:
                name = min(due, key=lambda n: (due[n], order[n]))
                t = due[name]
                if t - START > max_virtual or (name == "fetcher" and self.done()):
                    break
                if name == "fetcher" and len(self.world.central.finished) != progress:
                    progress, progress_at = len(self.world.central.finished), t
                elif t - progress_at > stall:  # nothing finished for hours: report what was reached
                    break
                if daily and t - START >= DAY * (len(days) + 1):
                    days.append(self.book_size(len(days) + 1))
                if t - last_tick >= self.tick:
                    self.world.advance(t)
                    last_tick = t
                self.clock.set(t)
                agent = by_name[name]
                overhead = self.world.meter.overhead
                cpu0, wall0 = time.process_time(), time.perf_counter()
                killed = None
                if self.incarnation is None:
                    agent.cycle()
                else:
                    killed = self.incarnation.cycle(agent)
                fig = self.figures[name]
                fig.cycles += 1
                fig.cpu += time.process_time() - cpu0 - (self.world.meter.overhead - overhead)
                fig.walls.append(time.perf_counter() - wall0)
                due[name] = t + agent.interval
                if killed is not None:
                    restart = self.kill_and_restart(t)
                    last_tick = restart
                    by_name = {a.name: a for a in self.agents}
                    due = {a.name: restart for a in self.agents}  # a started daemon runs every agent at once
            if daily:
                days.append(self.book_size(len(days) + 1))  # the last (partial) day
            chaos = self.chaos_report()
        finally:
            self.close()
        db = self.config.db_path
        size = sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())
        return SimResult(
            workers=len(self.world.jobs),
            ranges_done=len(self.world.central.finished),
            ranges_total=self.world.central.total_ranges,
            virtual_seconds=t - START,
            real_seconds=time.perf_counter() - started,
            harvester_cpu=sum(f.cpu for f in self.figures.values()),
            world_cpu=self.world.meter.overhead,
            db_bytes=size,
            agents=self.figures,
            chaos=chaos,
            days=days,
            max_running=self.config.queues[0].max_running_workers,
        )

    def chaos_report(self) -> dict[str, Any] | None:
        """The kills that happened, by kind, and the lost/doubled accounting of the outside world."""
        if self.chaos is None:
            return None
        fired = self.chaos.fired
        rows = self.store.query(
            "SELECT batch_id, count(*) AS n FROM workers WHERE batch_id IS NOT NULL GROUP BY batch_id"
        )
        report = accounting(
            self.world.jobs, self.batch.asked, [(r["batch_id"], r["n"]) for r in rows], self.world.central
        )
        return {
            "kills_planned": len(self.chaos.plan),
            "kills": len(fired),
            "kills_by_kind": self.chaos.by_kind(),
            "kills_by_agent": {a: sum(1 for k in fired if k.target == a) for a in sorted({k.target for k in fired})},
            "kill_points": [f"{k.target}:{k.kind}:{k.detail}@{round((k.fired_at or START) - START)}" for k in fired],
            **report,
            "ok": len(fired) == len(self.chaos.plan)
            and report["workers_lost"] == report["workers_doubled"] == report["workers_tracked_twice"] == 0
            and report["ranges_lost"] == report["ranges_double_finished"] == 0,
        }

    def close(self) -> None:
        if self.recording is not None:
            self.recording.close()
            self.recording = None
        self.store.close()


WALLTIME = 140  # scale_point's walltime_max: the pilot drains 30 s before it, so ~10 ranges of 10 s per worker
RUNNING_SHARE = 0.005  # scale_point's default concurrency: this share of its workers run at once (~200 waves)


def running_for(workers: int) -> int:
    """scale_point's default max_running_workers: RUNNING_SHARE of the workers (at least 2), so every size runs
    the same number of waves and its task's end (the last wave: workers that start when few or no ranges are left)
    is the same share of its workers; at a fixed 200 running that share was about a third of 1,000 workers and
    some 5 % of 10,000, and the ranges per worker grew with the size (10.7 at 1,000 -> 14.7 at 100,000)."""
    return max(2, round(workers * RUNNING_SHARE))


def scale_point(
    workers: int,
    work_root: Path,
    behaviour: Behaviour | None = None,
    max_running: int | None = None,
    kills: int = 0,
    kill_seed: int = 1,
) -> SimResult:
    """One simulated run that needs about `workers` workers (10 ranges of 10 events per worker, 1 rank and up to
    3 minutes each: some 14 ranges each, the same at every size); `max_running`: None is running_for(workers);
    `kills`: daemon kills and restarts during it (harvester_edge.replay.chaos)."""
    b = behaviour or Behaviour()
    b = Behaviour(**{**b.__dict__, "ranges": min(workers * 10, 1_000_000), "jobs": max(1, min(20, workers // 100))})
    work = Path(work_root) / f"sim-{workers}"
    work.mkdir(parents=True, exist_ok=True)
    max_running = running_for(workers) if max_running is None else max_running
    config = site_config(work, max_running=max_running, max_queued=max_running // 2, walltime_max=WALLTIME)
    sim = Simulation(work, b, config, kills=kills, kill_seed=kill_seed)
    return sim.run()


def steady_point(
    days: float,
    work_root: Path,
    behaviour: Behaviour | None = None,
    max_running: int = 200,
    job_every: float = 7200.0,
    ranges_per_job: int = 200,
    keep_history: float = DAY,
) -> SimResult:
    """Steady work for `days` virtual days: a job of `ranges_per_job` ranges arrives every `job_every` seconds,
    the sweeper forgets what ended more than `keep_history` ago; the book's size is sampled every virtual day.
    The agents run at 6x the default intervals (STEADY_INTERVALS), so a month takes minutes."""
    b = behaviour or Behaviour()
    jobs = max(1, int(days * DAY // job_every))
    b = Behaviour(**{**b.__dict__, "ranges": ranges_per_job, "jobs": jobs, "job_every": job_every})
    work = Path(work_root) / f"steady-{days:g}d"
    work.mkdir(parents=True, exist_ok=True)
    config = site_config(
        work,
        max_running=max_running,
        max_queued=max_running // 2,
        intervals=STEADY_INTERVALS,
        keep_history=keep_history,
    )
    return Simulation(work, b, config).run(max_virtual=days * DAY + DAY, daily=True)


def default_work_root() -> Path:
    shm = Path("/dev/shm")  # access points are real directories: tmpfs keeps their fsyncs cheap
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))
