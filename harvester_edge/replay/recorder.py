"""Record mode: every outside contact of a running site becomes one line of a trace (see trace.py).

`Recording.start(path, config, store, clock)` opens the trace; its `runner`, `transport`, `files` and `clock`
methods wrap the seams given to harvester_edge.site.build_site, each wrapper passing every call through and writing
it down (each agent cycle's start, read from the clock, becomes a "cycle" record). Nothing is patched or swapped:
the site is built over the wrapped seams. `Recording.close()` closes the file. Contacts are tagged with the cycle
that made them (a thread-local: one cycle runs in one thread), so a trace stays replayable even if cycles
overlapped; replays are exact when cycles ran one at a time (daemon threads 1).
"""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harvester_edge.agents.base import Agent
from harvester_edge.replay import trace
from harvester_edge.seams.clock import Clock
from harvester_edge.seams.commands import CommandResult, CommandRunner
from harvester_edge.seams.files import FilesBackend
from harvester_edge.seams.http import (
    REDACTED,
    HttpResult,
    Transport,
    TransportError,
    redact_call,
    redact_mapping,
)
from harvester_edge.store import Store, meta

log = logging.getLogger(__name__)


class TraceWriter:
    """Appends records under a lock, numbering them; normalizes paths of the work dir and the interpreter."""

    def __init__(self, path: Path, head: dict) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.work_dir = str(head["work_dir"])
        self._fh: io.TextIOBase | None = trace.open_text(self.path, "w")
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
    if op in ("read_heartbeat", "payload_logs", "read_payload_log"):
        return value
    return None if value is None else str(value)


def file_args(op: str, args: tuple, kwargs: dict) -> list:
    """The request of a pilot-file call as JSON (pure): paths as strings, a consumed item as its path."""
    if op == "mark_consumed":
        item = args[1]
        return [str(args[0]), str(item if isinstance(item, (str, Path)) else item.path)]
    if op == "write_job_spec":
        return [str(args[0]), dict(args[1])]
    if op == "write_script":
        return [str(args[0]), str(args[1]), str(args[2])]
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


class RecordingRunner(CommandRunner):
    """The command seam, recorded: each result of the wrapped runner is written as a "command" record."""

    def __init__(self, inner: CommandRunner, writer: TraceWriter) -> None:
        super().__init__()
        self.inner = inner
        self.writer = writer

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float = 30.0,
        cwd: str | None = None,
        failure_expected: bool = False,
    ) -> CommandResult:
        result = self.inner.run(argv, stdin=stdin, timeout=timeout, cwd=cwd, failure_expected=failure_expected)
        self.writer.write({"kind": "command", **result.to_dict()})
        return result


class RecordingTransport:
    """The HTTP seam, recorded: each call of the wrapped transport (request and answer, secrets redacted)."""

    def __init__(self, inner: Transport, writer: TraceWriter) -> None:
        self.inner = inner
        self.writer = writer
        self.base_url = inner.base_url

    def request(self, method: str, path: str, **kwargs: Any) -> HttpResult:
        result, error = None, None
        try:
            result = self.inner.request(method, path, **kwargs)
            return result
        except TransportError as exc:
            cause = exc.__cause__ or exc  # what the connection raised, as the transport's own message says
            error = f"{type(cause).__name__}: {cause}"
            raise
        finally:
            try:
                record = redact_call(method, path, kwargs.get("params"), kwargs.get("json"), None, result, error)
                self.writer.write({k: v for k, v in record.items() if k != "headers"})
            except Exception:
                log.exception("HTTP recorder failed on %s %s", method, path)

    def close(self) -> None:
        self.inner.close()


class Recording:
    """One trace being written, and the wrappers that write into it."""

    def __init__(self, writer: TraceWriter) -> None:
        self.writer = writer

    @classmethod
    def start(cls, path: Path | str, config: Any, store: Store, clock: Clock) -> Recording:
        """Start recording the contacts of the site of `config` (its `store` holds the install id) into `path`
        (.gz: compressed)."""
        install_id = meta.install_id(store.connection())
        work_dir = str(config.paths.work_dir)
        head = trace.header(
            config.site, clock.now(), work_dir, install_id, trace.normalize(config_snapshot(config), work_dir)
        )
        log.info("recording every outside contact into %s", path)
        return cls(TraceWriter(Path(path), head))

    def runner(self, inner: CommandRunner) -> CommandRunner:
        return RecordingRunner(inner, self.writer)

    def transport(self, inner: Transport) -> Transport:
        return RecordingTransport(inner, self.writer)

    def files(self, inner: FilesBackend) -> FilesBackend:
        return RecordingFiles(inner, self.writer)

    def clock(self, inner: Clock) -> Clock:
        return RecordingClock(inner, self.writer)

    def close(self) -> None:
        self.writer.close()
        log.info("recording closed: %d records in %s", self.writer.records, self.writer.path)


def config_snapshot(config: Any) -> dict:
    """The site config as the trace header keeps it: JSON, secrets redacted, no source path."""
    data = config.model_dump(mode="json", exclude={"source"})
    for hook in (data.get("alerts") or {}).get("webhooks") or []:  # a webhook URL may be a secret (Slack's are)
        hook["url"] = f"https://redacted.invalid/{hook['name']}"
        hook["headers"] = {k: REDACTED for k in hook.get("headers") or {}}
    return redact_mapping(data)
