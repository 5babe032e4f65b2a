"""Chaos for the scale simulation: kill the daemon at random moments, SIGKILL-like, and restart it as cron would.

A daemon incarnation runs its agents' cycles on a thread of its own (`Incarnation`). A kill happens from inside one
of its outside contacts or bookkeeping statements: a batch command (a submission or another one), an HTTP request,
a pilot-file operation (each just before or just after the call: after means the outside effect happened and the
daemon never saw the answer), or a statement inside a write transaction (before it: the transaction's work so far
is lost). The killed thread is parked for good, inside that call: no `finally`, no rollback handler, no log line of
the daemon runs any more, as after SIGKILL. Its SQLite connections are closed without a commit (what the kernel
does to a dead process's file locks: the uncommitted transaction is gone), the outside world (the synthetic batch
system, central service and pilots) goes on, and the next daemon is built from the database file through the
daemon's own restart path (harvester_edge.site.restart_store, then build_site) with a new daemon id.

When: kill i of n is armed once the task reached a seeded random share of its finished ranges (sorted, so the kills
spread over the run); it then fires at a seeded random number of matching calls of its kind in its target agent's
cycle (if that does not come while 10 % more ranges finish, in any agent's; after 15 %, at any kill point). The kinds
take turns in a seeded order, so every kind is hit when n >= len(KINDS).
"""

from __future__ import annotations

import queue
import random
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harvester_edge.agents.base import Agent
from harvester_edge.seams.commands import CommandResult, CommandRunner
from harvester_edge.seams.files import FilesBackend
from harvester_edge.seams.http import HttpResult, Transport

SUBMIT_TOOLS = frozenset({"sbatch", "bsub"})
KINDS = (
    "submit:before",  # the submission never reached the batch system
    "submit:after",  # the batch job exists, its id was never recorded (find-by-name must find it)
    "batch:before",
    "batch:after",  # a status query or cancel that happened, its answer lost
    "http:before",
    "http:after",  # the central service applied a call (ranges handed out, a report taken), the answer lost
    "files:before",
    "files:after",  # a pilot-file operation done (ranges file written, request consumed), not recorded
    "sql",  # between two statements of a bookkeeping write transaction (before COMMIT too)
)
AGENTS_OF = {  # the agents whose cycles make calls of a kind: each kill aims at one of them
    "submit": ("submitter",),
    "batch": ("monitor",),
    "http": ("feeder", "propagator"),
    "files": ("submitter", "monitor", "feeder"),
    "sql": ("submitter", "monitor", "feeder", "propagator"),
}
_NEVER = threading.Event()  # what a killed thread waits for


@dataclass
class Kill:
    threshold: float  # share of the task's ranges finished before it is armed
    kind: str
    target: str  # the agent in whose cycle it happens
    skip: int  # matching calls let through once armed
    fired_at: float | None = None
    detail: str = ""


@dataclass
class Chaos:
    """The kill plan of one run and the switch its hooks call."""

    kills: int
    seed: int = 1
    progress: Callable[[], float] = lambda: 0.0
    now: Callable[[], float] = lambda: 0.0
    plan: list[Kill] = field(default_factory=list)
    current: Incarnation | None = None

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        kinds: list[str] = []
        while len(kinds) < self.kills:
            turn = list(KINDS)
            rng.shuffle(turn)
            kinds += turn
        thresholds = sorted(rng.uniform(0.03, 0.75) for _ in range(self.kills))
        self.plan = [
            Kill(t, k, rng.choice(AGENTS_OF[k.split(":")[0]]), rng.randrange(8)) for t, k in zip(thresholds, kinds)
        ]

    @property
    def fired(self) -> list[Kill]:
        return [k for k in self.plan if k.fired_at is not None]

    def point(self, kind: str, detail: str) -> None:
        """A kill point of `kind` in the current incarnation's thread: kill it here if the plan says so."""
        inc = self.current
        if inc is None or threading.current_thread() is not inc.thread:
            return  # the simulation's own reads, or nothing to kill
        nxt = next((k for k in self.plan if k.fired_at is None), None)
        if nxt is None:
            return
        late = self.progress() - nxt.threshold  # not met in time: any agent's call of the kind, then any call
        if late < 0 or (nxt.kind != kind and late < 0.15) or (nxt.target != inc.agent_name and late < 0.1):
            return
        if nxt.skip > 0:
            nxt.skip -= 1
            return
        nxt.fired_at, nxt.detail = self.now(), detail
        inc.die(nxt)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.fired:
            out[k.kind] = out.get(k.kind, 0) + 1
        return out

    # -- the seams of one incarnation, wrapped with kill points ------------------------------------------------
    def connection_class(self) -> type[sqlite3.Connection]:
        chaos = self

        class ChaosConnection(sqlite3.Connection):
            """Statements inside a write transaction are kill points (BEGIN itself is not: nothing to lose)."""

            def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
                if self.in_transaction:
                    chaos.point("sql", " ".join(sql.split()[:3])[:40])
                return super().execute(sql, parameters)

            def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
                if self.in_transaction:
                    chaos.point("sql", " ".join(sql.split()[:3])[:40])
                return super().executemany(sql, parameters)

        return ChaosConnection

    def runner(self, inner: CommandRunner) -> CommandRunner:
        return ChaosRunner(inner, self)

    def transport(self, inner: Transport) -> Transport:
        return ChaosTransport(inner, self)

    def files(self, inner: FilesBackend) -> FilesBackend:
        return ChaosFiles(inner, self)


class ChaosRunner(CommandRunner):
    def __init__(self, inner: CommandRunner, chaos: Chaos) -> None:
        super().__init__()
        self.inner = inner
        self.chaos = chaos

    def _execute(self, argv: tuple[str, ...], *, stdin: str | None, timeout: float, cwd: str | None) -> CommandResult:
        kind = "submit" if argv[0] in SUBMIT_TOOLS else "batch"
        self.chaos.point(f"{kind}:before", argv[0])
        result = self.inner._execute(argv, stdin=stdin, timeout=timeout, cwd=cwd)
        self.chaos.point(f"{kind}:after", argv[0])
        return result


class ChaosTransport:
    def __init__(self, inner: Transport, chaos: Chaos) -> None:
        self.inner = inner
        self.chaos = chaos
        self.base_url = inner.base_url

    def request(self, method: str, path: str, **kwargs: Any) -> HttpResult:
        name = path.rsplit("/", 1)[-1]
        self.chaos.point("http:before", name)
        result = self.inner.request(method, path, **kwargs)
        self.chaos.point("http:after", name)
        return result

    def close(self) -> None:
        self.inner.close()


class ChaosFiles:
    def __init__(self, inner: FilesBackend, chaos: Chaos) -> None:
        self.inner = inner
        self.chaos = chaos

    def call(self, op: Any, *args: Any, **kwargs: Any) -> Any:
        self.chaos.point("files:before", str(op))
        value = self.inner.call(op, *args, **kwargs)
        self.chaos.point("files:after", str(op))
        return value


class Incarnation:
    """One daemon process's life: its agents' cycles run one at a time on its own thread, until a kill parks it."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.agent_name = ""
        self._todo: queue.SimpleQueue[Agent] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Kill | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=f"sim-daemon-{number}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            agent = self._todo.get()
            self.agent_name = agent.name
            agent.cycle()
            self._done.put(None)

    def cycle(self, agent: Agent) -> Kill | None:
        """Run one cycle of `agent`; the kill that ended this daemon during it, if one did."""
        self._todo.put(agent)
        return self._done.get()

    def die(self, kill: Kill) -> None:
        """Called on this incarnation's thread: report the kill and never return (nothing after it runs)."""
        self._done.put(kill)
        _NEVER.wait()


def accounting(
    jobs: Mapping[str, Any], asked: set[str], db_batch_ids: Sequence[tuple[str, int]], central: Any
) -> dict[str, Any]:
    """Lost and doubled workers and ranges, from the synthetic world's ground truth.

    `jobs`: batch id -> the synthetic batch system's job (its name is the worker's unique intent); `asked`: the
    batch ids the daemon named in a status query or cancel; `db_batch_ids`: (batch id, worker rows holding it)
    from the daemon's database at the end (rows the sweeper removed earlier were asked about before)."""
    known = asked | {b for b, _ in db_batch_ids}
    by_name: dict[str, int] = {}
    for job in jobs.values():
        by_name[job.name] = by_name.get(job.name, 0) + 1
    lost = sorted(b for b in jobs if b not in known)
    given_up = central.given_up()
    return {
        "batch_jobs": len(jobs),
        "workers_known": sum(1 for b in jobs if b in known),
        "workers_lost": len(lost),
        "workers_lost_ids": lost[:20],
        "workers_doubled": sum(n - 1 for n in by_name.values() if n > 1),
        "workers_tracked_twice": sum(n - 1 for _, n in db_batch_ids if n > 1),
        "ranges_total": central.b.ranges,
        "ranges_finished": len(central.finished),
        "ranges_given_up": given_up,
        "ranges_lost": central.b.ranges - len(central.finished) - given_up,
        "ranges_double_finished": central.double_finished,
        "range_reports_redelivered": central.redelivered,
        "range_reports_stale": central.stale,
        "ranges_released_by_job_end": central.released,
    }
