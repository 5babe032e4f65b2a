"""Record mode: every outside contact of a running daemon becomes one line of a trace (see trace.py).

`install(ctx, path)` wraps the context's clock (each agent cycle's start becomes a "cycle" record) and the pilot-file
seam, and returns a `Recording` whose `command` and `http` methods are the recorder hooks of the CommandRunner and
the HttpTransport (services.start_services passes them in). `Recording.close()` restores the seams and closes the
file. Contacts are tagged with the cycle that made them (a thread-local: one cycle runs in one thread), so a trace
stays replayable even if cycles overlapped; replays are exact when cycles ran one at a time (daemon threads 1).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harvester_edge.replay import trace
from harvester_edge.seams import files
from harvester_edge.seams.clock import Clock
from harvester_edge.seams.commands import CommandResult
from harvester_edge.seams.http import redact_mapping
from harvester_edge.store import meta

log = logging.getLogger(__name__)


class TraceWriter:
    """Appends records under a lock, numbering them; normalizes paths of the work dir and the interpreter."""

    def __init__(self, path: Path, head: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.work_dir = str(head["work_dir"])
        self._fh = trace.open_text(self.path, "w")
        self._lock = threading.Lock()
        self._seq = 0
        self._local = threading.local()
        self._fh.write(json.dumps(head, separators=(",", ":"), default=str) + "\n")
        self.started = float(head["started"])
        self.records = 0

    @property
    def cycle(self) -> int | None:
        return getattr(self._local, "cycle", None)

    def write(self, record: dict, starts_cycle: bool = False) -> None:
        record = trace.normalize(record, self.work_dir)
        with self._lock:
            if self._fh is None:
                return  # closed: the daemon is stopping; late contacts are not part of the recording
            self._seq += 1
            record["seq"] = self._seq
            if starts_cycle:
                self._local.cycle = self._seq
                self._local.t = record["t"]
            else:
                record["cycle"] = self.cycle
                record["t"] = getattr(self._local, "t", self.started)
            record["real"] = round(time.time(), 6)
            self._fh.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self.records += 1

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class RecordingClock(Clock):
    """Passes time through; a read from `Agent.cycle` (the start of a cycle) is written as a "cycle" record."""

    def __init__(self, inner: Clock, writer: TraceWriter) -> None:
        self.inner = inner
        self.writer = writer

    def now(self) -> float:
        value = self.inner.now()
        caller = sys._getframe(1)  # cheap: one frame up; only Agent.cycle's own read marks a cycle start
        if caller.f_code.co_name == "cycle":
            from harvester_edge.agents.base import Agent

            agent = caller.f_locals.get("self")
            if isinstance(agent, Agent):
                self.writer.write({"kind": "cycle", "agent": agent.name, "t": value}, starts_cycle=True)
        return value

    def monotonic(self) -> float:
        return self.inner.monotonic()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        return self.inner.sleep(seconds, stop)


def error_record(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc), "errno": getattr(exc, "errno", None)}


def file_result(op: str, value: Any) -> Any:
    """A pilot-file seam result as JSON (pure); replayer.file_value is the inverse."""
    if op == "pending":
        return [[seq, str(path)] for seq, path in value]
    if op == "load_event_request":
        return {
            "seq": value.seq,
            "path": str(value.path),
            "time": value.time,
            "requests": {str(k): v for k, v in value.requests.items()},
        }
    if op == "load_event_status":
        return {
            "seq": value.seq,
            "path": str(value.path),
            "time": value.time,
            "events": {str(k): v for k, v in value.events.items()},
        }
    if op == "read_heartbeat":
        return value
    return None if value is None else str(value)


def file_args(op: str, args: tuple, kwargs: dict) -> list:
    """The request of a pilot-file call as JSON (pure): paths as strings, a consumed item as its path."""
    if op == "mark_consumed":
        item = args[1]
        return [str(args[0]), str(item if isinstance(item, (str, Path)) else item.path)]
    if op == "write_event_ranges":
        ap, seq, ranges = args[:3]
        no_more = kwargs.get("no_more", args[3] if len(args) > 3 else ())
        return [
            str(ap),
            int(seq),
            {str(k): [dict(r) for r in v] for k, v in ranges.items()},
            sorted(int(p) for p in no_more),
        ]
    return [str(a) for a in args]


def command_inputs(argv, work_dir: str, limit: int = 1 << 20) -> dict[str, str]:
    """Files under the work dir that a command reads by name (sbatch's script): part of what was asked."""
    out = {}
    for arg in argv[1:]:
        if isinstance(arg, str) and work_dir and arg.startswith(work_dir + "/"):
            path = Path(arg)
            try:
                if path.is_file() and path.stat().st_size <= limit:
                    out[arg] = path.read_text(errors="replace")
            except OSError:
                continue
    return out


class RecordingFiles:
    """The pilot-file seam backend that performs each call on the real files and records it."""

    def __init__(self, inner: Any, writer: TraceWriter) -> None:
        self.inner = inner
        self.writer = writer

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        record: dict[str, Any] = {"kind": "file", "op": op, "args": file_args(op, args, kwargs)}
        start = time.perf_counter()
        try:
            value = self.inner.call(op, *args, **kwargs)
        except Exception as exc:
            record.update(error=error_record(exc), duration=round(time.perf_counter() - start, 6))
            self.writer.write(record)
            raise
        record.update(result=file_result(op, value), duration=round(time.perf_counter() - start, 6))
        self.writer.write(record)
        return value


class Recording:
    """The hooks of one recording; `close()` puts the seams back as they were."""

    def __init__(self, ctx: Any, writer: TraceWriter) -> None:
        self.ctx = ctx
        self.writer = writer
        self._old_clock = ctx.clock
        ctx.clock = RecordingClock(ctx.clock, writer)
        self._old_files = files.install(RecordingFiles(files.backend(), writer))

    def command(self, result: CommandResult) -> None:
        record = {"kind": "command", **result.to_dict()}
        inputs = command_inputs(result.argv, self.writer.work_dir)
        if inputs:
            record["inputs"] = inputs
        self.writer.write(record)

    def http(self, record: dict) -> None:
        record = {k: v for k, v in record.items() if k != "headers"}  # redacted already; not part of the request
        self.writer.write(record)

    def close(self) -> None:
        files.install(self._old_files)
        self.ctx.clock = self._old_clock
        self.writer.close()
        log.info("recording closed: %d records in %s", self.writer.records, self.writer.path)


def config_snapshot(config: Any) -> dict:
    """The site config as the trace header keeps it: JSON, secrets redacted, no source path."""
    data = config.model_dump(mode="json", exclude={"source"})
    return redact_mapping(data)


def install(ctx: Any, path: Path | str) -> Recording:
    """Start recording the contacts of the daemon whose context is `ctx` into `path` (.gz: compressed)."""
    install_id = meta.install_id(ctx.store.connection())
    config = ctx.config
    work_dir = str(config.paths.work_dir)
    head = trace.header(
        config.site, ctx.clock.now(), work_dir, install_id, trace.normalize(config_snapshot(config), work_dir)
    )
    writer = TraceWriter(Path(path), head)
    log.info("recording every outside contact into %s", path)
    return Recording(ctx, writer)
