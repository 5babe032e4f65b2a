"""The pilot-file seam: every read (and write) the agents make of a pilot's access point passes here.

The functions have the names, arguments and results of `jumbo.protocol`'s, so an agent swaps
`from jumbo import protocol` for `from harvester_edge.seams import files as protocol`. By default they call
`harvester_edge.pilot_files` (pilot files are untrusted input: opened safely, capped, validated); offline replay
installs a backend that records each call into a trace
(`harvester_edge.replay.recorder`) or serves it back from one (`harvester_edge.replay.replayer`), and the scale
simulation installs synthetic pilots. One backend per process: the daemon is one per process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harvester_edge import pilot_files

# re-exported for the agents, which see pilot files only through this seam
from harvester_edge.pilot_files import Unreadable  # noqa: F401
from jumbo.protocol import REQUESTS, STATUS, Batch, ProtocolError, Request  # noqa: F401

log = logging.getLogger(__name__)

OPERATIONS = (
    "pending",
    "load_event_request",
    "load_event_status",
    "read_heartbeat",
    "mark_consumed",
    "quarantine",
    "write_event_ranges",
)


class DirectFiles:
    """The real file system (what production runs): reads go through harvester_edge.pilot_files, which opens
    only regular, singly linked files inside the access point under a size cap, and validates every field."""

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(pilot_files, op)(*args, **kwargs)


_backend: Any = DirectFiles()
_lock = threading.Lock()


def backend() -> Any:
    return _backend


def install(new: Any) -> Any:
    """Make `new` (an object with `call(op, *args, **kwargs)`) the backend; returns the previous one."""
    global _backend
    with _lock:
        old, _backend = _backend, new
    return old


@contextmanager
def installed(new: Any) -> Iterator[Any]:
    old = install(new)
    try:
        yield new
    finally:
        install(old)


def pending(ap: Path | str, name: str) -> list[tuple[int, Path]]:
    return _backend.call("pending", ap, name)


def load_event_request(path: Path | str) -> Request:
    return _backend.call("load_event_request", path)


def load_event_status(path: Path | str) -> Batch:
    return _backend.call("load_event_status", path)


def read_heartbeat(ap: Path | str) -> dict | None:
    return _backend.call("read_heartbeat", ap)


def mark_consumed(ap: Path | str, item: Any) -> Path:
    return _backend.call("mark_consumed", ap, item)


def quarantine(path: Path | str) -> Path:
    return _backend.call("quarantine", path)


def write_event_ranges(
    ap: Path | str, seq: int, ranges: Mapping[int, Iterable[Mapping]], no_more: Iterable[int] = ()
) -> Path:
    return _backend.call("write_event_ranges", ap, seq, ranges, no_more=no_more)


def set_aside(worker_id: int, path: Path, exc: Exception) -> None:
    """Move a bad pilot file aside as NAME.bad with one log line naming the worker, the file and the fault."""
    try:
        bad = quarantine(path)
    except OSError as err:
        log.error(
            "worker %d: pilot file %s is bad (%s) and could not be moved aside: %s",
            worker_id,
            path.name,
            exc,
            err,
            extra={"worker_id": worker_id},
        )
        return
    log.error(
        "worker %d: pilot file %s is bad, moved aside as %s: %s",
        worker_id,
        path.name,
        bad.name,
        exc,
        extra={"worker_id": worker_id},
    )


def each_pending(worker_id: int, ap: Path, name: str, load: Callable[[Path], Any]) -> Iterator[tuple[Path, Any]]:
    """(path, parsed) of each pending pilot file `name` of a worker, in order. A bad file is set aside; one that
    cannot be read this cycle (it vanished, the access point is unreadable) waits for the next; the rest go on."""
    try:
        found = pending(ap, name)
    except OSError as exc:
        log.warning(
            "worker %d: access point %s not readable this cycle: %s", worker_id, ap, exc, extra={"worker_id": worker_id}
        )
        return
    for _, path in found:
        try:
            parsed = load(path)
        except ProtocolError as exc:
            set_aside(worker_id, path, exc)
            continue
        except OSError as exc:  # vanished or unreadable for a reason of ours: try again next cycle
            log.warning(
                "worker %d: %s not read this cycle: %s", worker_id, path.name, exc, extra={"worker_id": worker_id}
            )
            continue
        yield path, parsed
