"""Replay mode: the real agents run again, cycle by cycle at the recorded (virtual) times, against the trace.

No Slurm, no LSF, no network, no sleeping: batch commands, HTTP answers and pilot files are served from the trace.
Each call the code makes is matched with the next recorded call of the same cycle by kind and request (argv and
stdin / method, path, params and body / file operation and paths); the first call that differs, that the recording
does not have, or that the recording has but the code no longer makes, is the divergence, reported with a diff.
"""

from __future__ import annotations

import builtins
import difflib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import Progress

from harvester_edge.config import SiteConfig
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.replay import trace
from harvester_edge.replay.recorder import file_args
from harvester_edge.seams.clock import FixedClock
from harvester_edge.seams.commands import CommandResult, CommandRunner
from harvester_edge.seams.http import HttpResult, TransportError, redact_call
from harvester_edge.site import build_site, sync_queues
from harvester_edge.store import meta, open_store
from jumbo import protocol

log = logging.getLogger(__name__)


class Diverged(HarvesterEdgeError):
    """The replayed code made a call the recording does not have at this point (raised inside a cycle)."""


class RecordedError(HarvesterEdgeError):
    """An error the recorded call raised, of a type replay does not rebuild; the message is the recorded one."""


@dataclass
class Divergence:
    line: int  # the trace line of the recorded call (or of the cycle record)
    agent: str
    t: float  # the cycle's virtual time, seconds after the recording started
    call: int  # the call's position in its cycle (1-based)
    message: str
    expected: Any = None
    actual: Any = None

    @property
    def diff(self) -> str:
        a = json.dumps(_split_lines(self.expected), indent=1, sort_keys=True, default=str).splitlines()
        b = json.dumps(_split_lines(self.actual), indent=1, sort_keys=True, default=str).splitlines()
        return "\n".join(difflib.unified_diff(a, b, "recorded", "replayed", lineterm="", n=2))


def _split_lines(obj: Any) -> Any:
    """Multi-line strings (batch scripts) as lists of lines, so a diff shows the line that changed."""
    if isinstance(obj, str) and "\n" in obj:
        return obj.splitlines()
    if isinstance(obj, dict):
        return {k: _split_lines(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_split_lines(v) for v in obj]
    return obj


@dataclass
class ReplayReport:
    trace: Path
    records: int = 0
    cycles: int = 0
    calls: int = 0
    skipped: int = 0  # records outside any cycle (daemon start-up), not replayed
    virtual_seconds: float = 0.0
    real_seconds: float = 0.0
    cycle_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def render(self) -> str:
        notes = "".join(f"\nwarning: {w}" for w in self.warnings)
        head = (
            f"replayed {self.cycles} cycles and {self.calls} calls of {self.trace.name} "
            f"({self.virtual_seconds:.0f}s recorded) in {self.real_seconds:.2f}s"
        )
        if self.divergence is None:
            return head + ": no divergence" + notes
        d = self.divergence
        return (
            f"{head}\nDIVERGED at {self.trace.name}:{d.line} (agent {d.agent}, cycle at +{d.t:.1f}s, "
            f"call {d.call} of the cycle): {d.message}\n{d.diff}{notes}"
        )

    def to_dict(self) -> dict:
        d = self.divergence
        return {
            "trace": str(self.trace),
            "records": self.records,
            "cycles": self.cycles,
            "calls": self.calls,
            "skipped": self.skipped,
            "virtual_seconds": round(self.virtual_seconds, 3),
            "real_seconds": round(self.real_seconds, 3),
            "cycle_errors": self.cycle_errors[:20],
            "warnings": self.warnings,
            "divergence": None
            if d is None
            else {"line": d.line, "agent": d.agent, "t": d.t, "call": d.call, "message": d.message, "diff": d.diff},
        }


def request_of(rec: dict) -> dict:
    """The part of a record that identifies the call (what replay compares)."""
    kind = rec["kind"]
    if kind == "command":
        return {"kind": kind, "argv": rec["argv"], "stdin": rec.get("stdin")}
    if kind == "http":
        return {
            "kind": kind,
            "method": rec["method"],
            "path": rec["path"],
            "params": rec.get("params"),
            "json": rec.get("json"),
        }
    return {"kind": kind, "op": rec["op"], "args": rec["args"]}


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def rebuild_error(err: dict) -> Exception:
    name, message = err.get("type", "Error"), err.get("message", "")
    if name in ("ProtocolError", "Unreadable"):  # Unreadable: a pilot file the daemon refused to open
        return protocol.ProtocolError(message)
    if name == "TransportError":
        return TransportError(message)
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, OSError):
        return cls(err["errno"], message) if err.get("errno") is not None else cls(message)
    return RecordedError(f"{name}: {message}")


def file_value(op: str, value: Any) -> Any:
    """The inverse of recorder.file_result (pure apart from building the protocol's dataclasses)."""
    if op == "pending":
        return [(int(seq), Path(path)) for seq, path in value]
    if op == "load_event_request":
        return protocol.Request(
            seq=value["seq"],
            path=Path(value["path"]),
            time=value["time"],
            requests={int(k): v for k, v in value["requests"].items()},
        )
    if op == "load_event_status":
        return protocol.Batch(
            seq=value["seq"],
            path=Path(value["path"]),
            time=value["time"],
            events={int(k): v for k, v in value["events"].items()},
        )
    if op in ("read_heartbeat", "payload_logs", "read_payload_log"):
        return value
    if op == "prune_archives":
        return int(value)
    return None if value is None else Path(value)


class Session:
    """The recorded calls of the current cycle and the matching of the replayed ones."""

    def __init__(self, work_dir: Path, start: float = 0.0) -> None:
        self.work_dir = str(work_dir)
        self.start = start
        self.expected: list[dict] = []
        self.index = 0
        self.cycle: dict = {}  # the recorded cycle being replayed (begin())
        self.calls = 0
        self.divergence: Divergence | None = None

    def begin(self, cycle: dict, calls: list[dict]) -> None:
        self.cycle, self.expected, self.index = cycle, calls, 0

    def _diverge(self, message: str, expected: Any, actual: Any, line: int) -> Diverged:
        if self.divergence is None:
            self.divergence = Divergence(
                line, self.cycle["agent"], self.cycle["t"] - self.start, self.index + 1, message, expected, actual
            )
        return Diverged(message)

    def serve(self, actual: dict) -> dict:
        """The recorded answer for `actual` (a normalized request), or Diverged."""
        if self.divergence is not None:
            raise Diverged(self.divergence.message)
        actual = _plain(trace.normalize(actual, self.work_dir))
        if self.index >= len(self.expected):
            raise self._diverge(
                f"the replayed code made a {actual['kind']} call the recording does not have "
                f"(the recorded cycle made {len(self.expected)} calls)",
                None,
                actual,
                self.cycle["_line"],
            )
        rec = self.expected[self.index]
        wanted = request_of(rec)
        if wanted != actual:
            what = (
                f"a different {actual['kind']} call"
                if wanted["kind"] == actual["kind"]
                else f"a {actual['kind']} call where the recording has a {wanted['kind']} call"
            )
            raise self._diverge(f"the replayed code made {what}", wanted, actual, rec["_line"])
        self.index += 1
        self.calls += 1
        return trace.denormalize(rec, self.work_dir)

    def end(self) -> None:
        if self.divergence is None and self.index < len(self.expected):
            rec = self.expected[self.index]
            self._diverge(
                f"the recording has {len(self.expected) - self.index} more call(s) in this cycle that "
                f"the replayed code no longer makes",
                request_of(rec),
                None,
                rec["_line"],
            )


class ReplayRunner(CommandRunner):
    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    def _execute(self, argv, *, stdin, timeout, cwd) -> CommandResult:
        rec = self.session.serve({"kind": "command", "argv": list(argv), "stdin": stdin})
        return CommandResult(
            argv=tuple(argv),
            stdin=stdin,
            stdout=rec.get("stdout", ""),
            stderr=rec.get("stderr", ""),
            returncode=int(rec["returncode"]),
            duration=float(rec.get("duration") or 0.0),
            timed_out=bool(rec.get("timed_out")),
        )


class ReplayTransport:
    """Stands in for HttpTransport (the Transport seam), answers from the trace."""

    base_url = "replay://central"

    def __init__(self, session: Session) -> None:
        self.session = session

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: object = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> HttpResult:
        call = redact_call(method, path, params, json, headers, None, None)
        rec = self.session.serve(
            {"kind": "http", "method": method, "path": path, "params": call["params"], "json": call["json"]}
        )
        if rec.get("error") and "status" not in rec:
            raise TransportError(f"{method} {path} got no answer (recorded): {rec['error']}")
        return HttpResult(
            int(rec["status"]),
            dict(rec.get("response_headers") or {}),
            str(rec.get("body", "")).encode(),
            float(rec.get("duration") or 0.0),
        )

    def close(self) -> None:
        pass


class ReplayFiles:
    """The pilot-file seam backend of a replay: reads come from the trace, writes are checked, not performed."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        rec = self.session.serve({"kind": "file", "op": op, "args": file_args(op, args, kwargs)})
        if rec.get("error"):
            raise rebuild_error(rec["error"])
        return file_value(op, rec.get("result"))


class VirtualClock(FixedClock):
    def set(self, t: float) -> None:
        with self._lock:
            self._now = float(t)


def replay_config(head: dict, work_dir: Path) -> SiteConfig:
    """The recorded site config, moved into `work_dir`, with no token files (replay talks to no service). The
    recorded mode stays: against a remote service some agents ask it what they would read from an embedded one's
    database (the alerts' failed tasks), and the replay must ask too."""
    config = SiteConfig.model_validate(trace.denormalize(head["config"], str(work_dir)))
    central = config.central.model_copy(
        update={
            "db": work_dir / "central.db",
            "tokens": config.central.tokens.model_copy(update={"token_file": None, "key_file": None}),
        }
    )
    paths = config.paths.model_copy(update={"work_dir": work_dir, "db": None, "access_points": None, "logs": None})
    return config.model_copy(update={"paths": paths, "central": central})


def group_cycles(records: list[dict]) -> tuple[list[tuple[dict, list[dict]]], int]:
    """[(cycle record, its calls in order)] in recorded order, and how many records belong to no cycle."""
    cycles: dict[int, tuple[dict, list[dict]]] = {}
    order: list[int] = []
    skipped = 0
    for rec in records:
        if rec["kind"] == "cycle":
            cycles[rec["seq"]] = (rec, [])
            order.append(rec["seq"])
        elif rec.get("cycle") in cycles:
            cycles[rec["cycle"]][1].append(rec)
        else:
            skipped += 1
    return [cycles[s] for s in order], skipped


def replay(
    path: Path | str,
    *,
    adjust: Callable[[SiteConfig], SiteConfig] | None = None,
    work_dir: Path | None = None,
    progress: bool = False,
) -> ReplayReport:
    """Replay a trace; `adjust` changes the recorded config first (what-if). Stops at the first divergence."""
    path = Path(path)
    started = time.perf_counter()
    head, records = trace.read_trace(path)
    cycles, skipped = group_cycles(records)
    report = ReplayReport(trace=path, records=len(records), skipped=skipped)
    offset = time.localtime(float(head["started"])).tm_gmtoff
    if head.get("utc_offset", offset) != offset:
        report.warnings.append(
            f"recorded at UTC offset {head['utc_offset']}s, replayed at {offset}s: batch times "
            f"parse differently; set TZ to the recording's zone for an exact replay"
        )
    own_dir = work_dir is None
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="he-replay-"))
    try:
        config = replay_config(head, work)
        if adjust is not None:
            config = adjust(config)
        store = open_store(config.db_path)
        with store.write() as conn:  # the recorded install id: batch job names are part of the requests
            meta.set_install_id(conn, head.get("install_id"))
        clock = VirtualClock(float(head["started"]))
        sync_queues(store, config, clock.now())
        session = Session(work, float(head["started"]))
        site = build_site(
            config,
            ReplayRunner(session),
            ReplayTransport(session),
            ReplayFiles(session),
            clock,
            store=store,
            daemon_id="replay:0",
            webhooks=lambda hook: ReplayTransport(session),  # alert webhooks answer from the trace too
        )
        _run(cycles, {a.name: a for a in site.agents}, clock, session, report, progress)
        store.close()
        report.calls = session.calls
        report.divergence = session.divergence
        if cycles:
            report.virtual_seconds = float(cycles[-1][0]["t"]) - float(head["started"])
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    report.real_seconds = time.perf_counter() - started
    return report


def _run(cycles, agents, clock: VirtualClock, session: Session, report: ReplayReport, progress: bool) -> None:
    bar = None
    if progress:
        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("replaying", total=len(cycles))
    try:
        for cycle, calls in cycles:
            agent = agents.get(cycle["agent"])
            session.begin(cycle, calls)
            if agent is None:
                session._diverge(
                    f"the recording has a cycle of agent {cycle['agent']!r}, which this build lacks",
                    cycle["agent"],
                    sorted(agents),
                    cycle["_line"],
                )
                break
            clock.set(cycle["t"])
            try:
                agent.run_cycle(cycle["t"])
            except Diverged:
                pass
            except Exception as exc:  # the daemon logs and survives a failed cycle; so does its replay
                report.cycle_errors.append(f"line {cycle['_line']} {agent.name}: {type(exc).__name__}: {exc}")
                log.debug("replayed %s cycle failed", agent.name, exc_info=True)
            session.end()
            report.cycles += 1
            if bar is not None:
                bar.advance(task)
            if session.divergence is not None:
                break
    finally:
        if bar is not None:
            bar.stop()
