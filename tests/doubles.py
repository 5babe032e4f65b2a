"""Test doubles for the agents' seams, in one place: a batch command runner with canned answers, a central-service
transport with canned PanDA answers, and a clock that moves only when told.

Each double stands in for the seam, not for the code behind it: the real batch plugin parses the canned sbatch and
squeue output, and the real CentralClient parses the canned /api/v1 envelopes, so an agent under test makes the same
calls it makes in production. Every call is recorded for the test to inspect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvester_edge.central.client import CentralClient
from harvester_edge.seams.clock import FixedClock
from harvester_edge.seams.commands import CommandResult, CommandRunner
from harvester_edge.seams.http import HttpResult, TransportError

NOW = 1_800_000_000.0


class FakeClock(FixedClock):
    """Starts at NOW; `advance(seconds)` moves it. (FixedClock is the package's virtual clock for replay.)"""

    def __init__(self, start: float = NOW) -> None:
        super().__init__(start)


# -- batch commands -------------------------------------------------------------------------------------------------

Answer = CommandResult | Callable[[tuple[str, ...]], CommandResult]


def out(stdout: str = "", stderr: str = "", returncode: int = 0) -> CommandResult:
    """A canned command result (argv is filled in by the runner)."""
    return CommandResult(argv=(), stdin=None, stdout=stdout, stderr=stderr, returncode=returncode, duration=0.0)


class BatchRunner(CommandRunner):
    """Answers batch commands from canned results, by command name, and records every call.

    `answer(name, result)` queues a result for the next call of `name` (sbatch, squeue, scancel, sacct, ...);
    `always(name, result)` answers every call of `name` for which nothing is queued. A result may be a callable
    taking the argv. A command with no answer fails the test (AssertionError names it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []
        self._queued: dict[str, list[Answer]] = {}
        self._always: dict[str, Answer] = {}

    def answer(self, name: str, *results: Answer) -> None:
        self._queued.setdefault(name, []).extend(results)

    def always(self, name: str, result: Answer) -> None:
        self._always[name] = result

    def called(self, name: str) -> list[tuple[str, ...]]:
        return [argv for argv in self.calls if argv[0] == name]

    def _execute(self, argv: tuple[str, ...], *, stdin: str | None, timeout: float, cwd: str | None) -> CommandResult:
        self.calls.append(argv)
        name = argv[0]
        queued = self._queued.get(name)
        if queued:
            answer = queued.pop(0)
        elif name in self._always:
            answer = self._always[name]
        else:
            raise AssertionError(f"BatchRunner: no canned answer for {' '.join(argv)!r}")
        result = answer(argv) if callable(answer) else answer
        return CommandResult(argv, stdin, result.stdout, result.stderr, result.returncode, 0.0, result.timed_out)


def squeue_line(batch_id: str, state: str, name: str = "job", reason: str = "None") -> str:
    """One line of the Slurm plugin's squeue format (%i|%T|%r|%S|%e|%j)."""
    return f"{batch_id}|{state}|{reason}|N/A|N/A|{name}"


def squeue(states: dict[str, str]) -> Callable[[tuple[str, ...]], CommandResult]:
    """squeue answering for the asked ids (-j a,b) from {batch id: Slurm state}; ids not in `states` are not listed."""

    def run(argv: tuple[str, ...]) -> CommandResult:
        asked = argv[argv.index("-j") + 1].split(",") if "-j" in argv else list(states)
        lines = [squeue_line(i, states[i]) for i in asked if i in states]
        if not lines:
            return out(stderr="slurm_load_jobs error: Invalid job id specified", returncode=1)
        return out("\n".join(lines) + "\n")

    return run


def sbatch_ids(first: int = 1000) -> Callable[[tuple[str, ...]], CommandResult]:
    """sbatch --parsable answering a new job id per call: first, first + 1, ..."""
    counter = iter(range(first, first + 1_000_000))
    return lambda argv: out(f"{next(counter)}\n")


# -- the central service --------------------------------------------------------------------------------------------


class Outage(Exception):
    """Raise-able answer marker: the transport gets no answer at all (TransportError)."""


@dataclass
class Call:
    method: str
    path: str  # without /api/v1/
    params: Any
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeTransport:
    """The HTTP transport under CentralClient, answering /api/v1 calls with canned envelopes.

    `on(path, *answers)` queues answers for the next calls of `path` ("pilot/acquire_jobs"); `always(path, answer)`
    answers every later call. An answer is the `data` of a success envelope, an HttpResult (any status, any body),
    the Outage class (no answer), or a callable taking the Call and returning one of those."""

    base_url: str = "http://central.test"
    calls: list[Call] = field(default_factory=list)
    _queued: dict[str, list[Any]] = field(default_factory=dict)
    _always: dict[str, Any] = field(default_factory=dict)

    def on(self, path: str, *answers: Any) -> None:
        self._queued.setdefault(path, []).extend(answers)

    def always(self, path: str, answer: Any) -> None:
        self._always[path] = answer

    def called(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> HttpResult:
        short = path.removeprefix("/api/v1/")
        call = Call(method, short, params, json, dict(headers or {}))
        self.calls.append(call)
        queued = self._queued.get(short)
        if queued:
            answer = queued.pop(0)
        elif short in self._always:
            answer = self._always[short]
        else:
            raise AssertionError(f"FakeTransport: no canned answer for {method} {short}")
        if callable(answer) and answer is not Outage:
            answer = answer(call)
        if answer is Outage:
            raise TransportError(f"{method} {self.base_url}{path} got no answer: connection refused (fake)")
        if isinstance(answer, HttpResult):
            return answer
        return envelope(answer)

    def close(self) -> None:
        pass


def envelope(data: Any, success: bool = True, message: str = "", status: int = 200) -> HttpResult:
    """An /api/v1 answer: {"success", "message", "data"}."""
    body = {"success": success, "message": message, "data": data}
    return HttpResult(status, {"content-type": "application/json"}, _dumps(body), 0.0)


def http(status: int, body: str) -> HttpResult:
    return HttpResult(status, {"content-type": "text/plain"}, body.encode(), 0.0)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def central_client(transport: FakeTransport, token_file: Path | None = None) -> CentralClient:
    """The real client over the fake transport; `token_file` as the site config's central.tokens.token_file."""
    return CentralClient(transport, token_file=token_file)  # type: ignore[arg-type]  # the transport, duck-typed


# -- canned PanDA objects -------------------------------------------------------------------------------------------


def panda_job(panda_id: int, task_id: int = 77, events: int = 800, per_range: int = 10) -> dict[str, Any]:
    """A job as the embedded central service hands it out (acquire_jobs), with its payload extension."""
    return {
        "PandaID": panda_id,
        "taskID": task_id,
        "jobsetID": task_id,
        "nEvents": events,
        "nEventsRemaining": events,
        "secondsPerEvent": 1.0,
        "eventsPerRange": per_range,
        "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {}},
    }


def panda_ranges(panda_id: int, numbers: Sequence[int], task_id: int = 77, per_range: int = 10) -> list[dict]:
    """Event ranges as acquire_event_ranges returns them (range n covers events per_range*(n-1)+1 .. per_range*n)."""
    return [
        {
            "eventRangeID": f"{task_id}-{panda_id}-1-{n}-1",
            "startEvent": per_range * (n - 1) + 1,
            "lastEvent": per_range * n,
            "LFN": "input.root",
            "GUID": "g",
            "scope": "edge",
        }
        for n in numbers
    ]


class ListTrace:
    """A trace that keeps its records in a list: hand it to replay.recorder's RecordingRunner / RecordingTransport
    to see what a seam recorded, exactly as a trace file would have it."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def write(self, record: dict, starts_cycle: bool = False) -> None:
        self.records.append(record)
