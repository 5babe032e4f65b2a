"""Structured payload logs: what a payload writes to stdout/stderr, as JSON lines in ``logs/payload.<rank>.jsonl``.

One record per line of output, tagged with where it came from::

    {"time": 1790000100.25, "task": 77, "job": 1001, "worker": 12, "rank": 2, "range": "77-1001-1-3-1",
     "stream": "stdout", "msg": "event 20 done"}

``worker`` is the harvester's worker id (HARVESTER_EDGE_WORKER_ID, None outside a harvester); output a payload
child writes between ranges carries the tags of the range before. A line longer than MAX_LINE bytes is cut into
several records. The file is appended (several pilots in one access point, a payload child and the rank's own
commands write to it, each write a whole number of lines) and bounded per rank: once it holds ``limit`` bytes one
last record ``{"stream": "meta", "truncated": true, "msg": "..."}`` is written and later output is dropped (the
writer counts what it drops). Each writer rechecks the file's size every RESTAT bytes, so with W writers a file
stays under limit + (W - 1) x RESTAT + one truncation record.

How output reaches the file: the payload's file descriptors 1 and 2 are pipes, read by a :class:`Pump` thread
that splits lines and writes records with the current range's tags. A worker child (jumbo.child) pumps its own
descriptors; at each range's end it calls :meth:`Pump.drain` (one poll(2) when nothing is left) before it answers,
so every line a range wrote carries that range's id. The rank runs a pump per command payload.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FILE = "payload.{rank}.jsonl"  # in the access point's logs/ folder
MAX_LINE = 8192  # bytes of one record's text; a longer line becomes several records
RESTAT = 1 << 20  # bytes a writer appends before it looks at the file's real size again (other writers)
DEFAULT_LIMIT_MB = 64.0  # per rank (jumbo.protocol.PILOT_DEFAULTS payload_log_max_mb)
WORKER_ENV = "HARVESTER_EDGE_WORKER_ID"


@dataclass(frozen=True)
class Settings:
    """Where a rank's payload log goes and how large it may grow: sent to a payload child with its first range."""

    path: str
    limit: int  # bytes
    worker: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "limit": self.limit, "worker": self.worker}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Settings:
        worker = obj.get("worker")
        return cls(str(obj["path"]), int(obj["limit"]), None if worker is None else int(worker))


def worker_id(env: Mapping[str, str] | None = None) -> int | None:
    value = (os.environ if env is None else env).get(WORKER_ENV, "")
    return int(value) if value.isdigit() else None


def settings_for(logs_dir: str, rank: int, limit_mb: float | None) -> Settings:
    mb = DEFAULT_LIMIT_MB if limit_mb is None else float(limit_mb)
    return Settings(os.path.join(logs_dir, FILE.format(rank=rank)), int(mb * 1024 * 1024), worker_id())


class LogFile:
    """The append-only, bounded JSON-lines file of one rank (one object per writing process)."""

    def __init__(self, settings: Settings, rank: int) -> None:
        self.settings, self.rank = settings, rank
        self.fd = os.open(settings.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.unchecked = 0  # bytes written since the size was last read from the file
        self.full = False
        self.dropped = 0  # records not written since the limit was reached

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        if self.full:
            self.dropped += len(records)
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8", "replace")
        if self.size + len(data) > self.settings.limit or self.unchecked >= RESTAT:
            self.size, self.unchecked = os.fstat(self.fd).st_size, 0
        if self.size + len(data) > self.settings.limit:
            self._truncate(records[0], len(records))
            return
        try:
            os.write(self.fd, data)
        except OSError:  # a full disk, a lost file system: drop the output rather than block the payload
            self.full, self.dropped = True, len(records)
            return
        self.size += len(data)
        self.unchecked += len(data)

    def _truncate(self, like: dict[str, Any], count: int) -> None:
        self.full, self.dropped = True, count
        mark = {
            **like,
            "stream": "meta",
            "truncated": True,
            "msg": f"payload log limit of {self.settings.limit} bytes for rank {self.rank} reached: "
            "later output of this rank is dropped",
        }
        try:
            os.write(self.fd, (json.dumps(mark) + "\n").encode())
        except OSError:
            pass  # a full disk: the pilot's disk check drains it; the payload must not block on its output

    def close(self) -> None:
        os.close(self.fd)


class Pump:
    """A thread that turns what arrives on pipes (descriptor -> stream name) into records of the current tags."""

    def __init__(self, log: LogFile, streams: Mapping[int, str], tags: dict[str, Any]) -> None:
        self.log, self.streams, self.tags = log, dict(streams), tags
        self.lock = threading.Lock()
        self.partial: dict[int, bytes] = dict.fromkeys(self.streams, b"")
        self.poller = select.poll()
        self.open = set(self.streams)
        for fd in self.streams:
            os.set_blocking(fd, False)
            self.poller.register(fd, select.POLLIN)
        self.thread = threading.Thread(target=self._loop, name="payload-log", daemon=True)

    def start(self) -> Pump:
        self.thread.start()
        return self

    def retag(self, **tags: Any) -> None:
        """The tags of the output that comes next (call after :meth:`drain`)."""
        with self.lock:
            self.tags.update(tags)

    def _loop(self) -> None:
        waiter = select.poll()  # its own: a poll object must not be polled by two threads at once (drain's)
        watched = set(self.open)
        for fd in watched:
            waiter.register(fd, select.POLLIN)
        while self.open:
            waiter.poll()
            with self.lock:
                self._read_ready(0)
                for fd in watched - self.open:  # closed at their end of file
                    waiter.unregister(fd)
                watched &= self.open

    def drain(self) -> None:
        """Write out everything the payload wrote so far (its pipes' content and a last unfinished line), under
        the current tags; costs one poll(2) when there is nothing."""
        with self.lock:
            self._read_ready(0)
            records = []
            for fd, rest in self.partial.items():
                if rest:
                    records.append(self._record(fd, rest))
                    self.partial[fd] = b""
            self.log.write(records)

    def _read_ready(self, timeout: int) -> None:
        while self.open:
            ready = self.poller.poll(timeout)
            if not ready:
                return
            records: list[dict[str, Any]] = []
            for fd, _event in ready:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.poller.unregister(fd)
                    self.open.discard(fd)
                    os.close(fd)
                    if self.partial[fd]:
                        records.append(self._record(fd, self.partial[fd]))
                        self.partial[fd] = b""
                    continue
                records.extend(self._lines(fd, data))
            self.log.write(records)

    def _lines(self, fd: int, data: bytes) -> list[dict[str, Any]]:
        chunks = (self.partial[fd] + data).split(b"\n")
        self.partial[fd] = chunks.pop()
        out = [self._record(fd, c) for c in chunks]
        while len(self.partial[fd]) > MAX_LINE:
            out.append(self._record(fd, self.partial[fd][:MAX_LINE]))
            self.partial[fd] = self.partial[fd][MAX_LINE:]
        return out

    def _record(self, fd: int, line: bytes) -> dict[str, Any]:
        text = line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        return {**self.tags, "time": round(time.time(), 6), "stream": self.streams[fd], "msg": text}

    def join(self, timeout: float) -> None:
        """Wait for the writers to close the pipes (a command's descendants may hold them longer: not waited for)."""
        self.thread.join(timeout)
        self.drain()


def tags_of(context: Mapping[str, Any], rank: int, worker: int | None) -> dict[str, Any]:
    """The tags of a range's output from its context (jumbo.worker builds it)."""
    return {
        "task": context.get("task_id"),
        "job": context.get("panda_id"),
        "worker": worker,
        "rank": rank,
        "range": context.get("event_range_id"),
    }


def pipes() -> tuple[dict[int, str], tuple[int, int]]:
    """Two pipes: ({read end: stream name}, (stdout write end, stderr write end))."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    return {out_r: "stdout", err_r: "stderr"}, (out_w, err_w)
