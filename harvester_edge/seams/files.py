"""The pilot-file seam: every read and write the agents and plugins make in a worker's access point passes here.

`PilotFiles` (one per site, built by harvester_edge.site and passed in as `ctx.files`; the batch plugins get the
same object) has the names, arguments and results of `jumbo.protocol`'s functions plus the daemon's own writes
(the job spec, the batch script, the drain request, the removal of an ended access point). Each call goes to a
backend, an object with `call(op, *args, **kwargs)`: `DirectFiles` in production (reads through
`harvester_edge.pilot_files`: pilot files are untrusted input, opened safely, capped, validated); offline replay
wraps it to record each call into a trace (`harvester_edge.replay.recorder`) or serves calls back from one
(`harvester_edge.replay.replayer`), and the scale simulation answers with synthetic pilots. No global backend.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, get_args

from harvester_edge import archives, pilot_files
from harvester_edge.filemodes import private_dir

# re-exported for the agents, which see pilot files only through this seam
from harvester_edge.pilot_files import Unreadable  # noqa: F401
from jumbo import protocol
from jumbo.protocol import JOB_REQUESTS, REQUESTS, STATUS, Batch, JobRequest, ProtocolError, Request  # noqa: F401

log = logging.getLogger(__name__)

FileOp = Literal[
    "pending",
    "load_event_request",
    "load_event_status",
    "read_heartbeat",
    "mark_consumed",
    "quarantine",
    "write_event_ranges",
    "load_job_request",
    "write_new_jobs",
    "write_job_spec",
    "request_drain",
    "write_script",
    "remove_access_point",
    "archive_access_point",
    "prune_archives",
    "payload_logs",
    "read_payload_log",
]
OPERATIONS: tuple[FileOp, ...] = get_args(FileOp)
T = TypeVar("T")


class DirectFiles:
    """The real file system (what production runs): reads go through harvester_edge.pilot_files, which opens
    only regular, singly linked files inside the access point under a size cap, and validates every field."""

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        own = getattr(self, "_" + op, None)
        return own(*args, **kwargs) if own is not None else getattr(pilot_files, op)(*args, **kwargs)

    @staticmethod
    def _write_job_spec(ap: Path | str, spec: Mapping) -> Path:
        private_dir(Path(ap))  # the access point is made here, 0700, with its job spec
        return protocol.write_job_spec(ap, spec)

    @staticmethod
    def _request_drain(ap: Path | str, reason: str) -> Path:
        return protocol.request_drain(ap, reason)

    @staticmethod
    def _write_script(ap: Path | str, name: str, text: str) -> Path:
        """Atomically (tmp + rename), executable, before anything is submitted."""
        ap = Path(ap)
        private_dir(ap)
        path = ap / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)
        return path

    @staticmethod
    def _remove_access_point(ap: Path | str) -> None:
        shutil.rmtree(ap, ignore_errors=True)

    @staticmethod
    def _archive_access_point(
        ap: Path | str, dest_dir: Path | str, worker_id: int, max_bytes: int, now: float
    ) -> Path | None:
        return archives.archive_access_point(ap, dest_dir, worker_id, max_bytes, now)

    @staticmethod
    def _prune_archives(dest_dir: Path | str, cutoff: float, limit: int) -> int:
        return archives.prune_archives(dest_dir, cutoff, limit)


class FilesBackend(Protocol):
    """Carries out one operation: its arguments and result are those of the PilotFiles method of that name (a
    backend dispatches by name, so its own signature cannot say more; PilotFiles' methods type each one)."""

    def call(self, op: FileOp, *args: Any, **kwargs: Any) -> Any: ...


class PilotFiles:
    """The seam object: each method is one operation on a backend (DirectFiles unless told otherwise)."""

    def __init__(self, backend: FilesBackend | None = None) -> None:
        self.backend: FilesBackend = backend if backend is not None else DirectFiles()

    # -- the pilot's files (jumbo.protocol) ------------------------------------------------------------------
    def pending(self, ap: Path | str, name: str) -> list[tuple[int, Path]]:
        return self.backend.call("pending", ap, name)

    def load_event_request(self, path: Path | str) -> Request:
        return self.backend.call("load_event_request", path)

    def load_event_status(self, path: Path | str) -> Batch:
        return self.backend.call("load_event_status", path)

    def read_heartbeat(self, ap: Path | str) -> dict | None:
        return self.backend.call("read_heartbeat", ap)

    def mark_consumed(self, ap: Path | str, item: Request | Batch | Path) -> Path:
        return self.backend.call("mark_consumed", ap, item)

    def quarantine(self, path: Path | str) -> Path:
        return self.backend.call("quarantine", path)

    def write_event_ranges(
        self, ap: Path | str, seq: int, ranges: Mapping[int, Iterable[Mapping]], no_more: Iterable[int] = ()
    ) -> Path:
        return self.backend.call("write_event_ranges", ap, seq, ranges, no_more=no_more)

    def payload_logs(self, ap: Path | str) -> list[str]:
        """The names of the payload log files (logs/payload.<rank>.jsonl, jumbo.paylog) in an access point."""
        return self.backend.call("payload_logs", ap)

    def read_payload_log(self, ap: Path | str, name: str, offset: int, limit: int) -> dict:
        """A batch of complete payload log lines from `offset` (harvester_edge.pilot_files.read_payload_log)."""
        return self.backend.call("read_payload_log", ap, name, offset, limit)

    def load_job_request(self, path: Path | str) -> JobRequest:
        return self.backend.call("load_job_request", path)

    def write_new_jobs(self, ap: Path | str, seq: int, jobs: Sequence[Mapping], stop: str = "") -> Path:
        """Answer a persistent pilot's job request with its next jobs (or none and why it is to stop)."""
        return self.backend.call("write_new_jobs", ap, seq, jobs, stop=stop)

    # -- the daemon's own writes into access points ---------------------------------------------------------
    def write_job_spec(self, ap: Path | str, spec: Mapping) -> Path:
        """Make the access point (0700) and write HPCJobs.json (validated by jumbo.protocol first)."""
        return self.backend.call("write_job_spec", ap, spec)

    def request_drain(self, ap: Path | str, reason: str) -> Path:
        return self.backend.call("request_drain", ap, reason)

    def write_script(self, ap: Path | str, name: str, text: str) -> Path:
        """A worker's batch script, atomically and executable, into its access point."""
        return self.backend.call("write_script", ap, name, text)

    def remove_access_point(self, ap: Path | str) -> None:
        """An ended worker's access point and everything in it (missing is fine)."""
        return self.backend.call("remove_access_point", ap)

    def archive_access_point(
        self, ap: Path | str, dest_dir: Path | str, worker_id: int, max_bytes: int, now: float
    ) -> Path | None:
        """The access point's logs, job report and monitoring data as dest_dir/worker-ID.tar.gz
        (harvester_edge.archives); None when the access point is gone."""
        return self.backend.call("archive_access_point", ap, dest_dir, worker_id, max_bytes, now)

    def prune_archives(self, dest_dir: Path | str, cutoff: float, limit: int) -> int:
        """Remove at most `limit` archives written before `cutoff`; how many went."""
        return self.backend.call("prune_archives", dest_dir, cutoff, limit)

    # -- pending files, one by one --------------------------------------------------------------------------
    def set_aside(self, worker_id: int, path: Path, exc: Exception) -> None:
        """Move a bad pilot file aside as NAME.bad with one log line naming the worker, the file and the fault."""
        try:
            bad = self.quarantine(path)
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

    def each_pending(self, worker_id: int, ap: Path, name: str, load: Callable[[Path], T]) -> Iterator[tuple[Path, T]]:
        """(path, parsed) of each pending pilot file `name` of a worker, in order. A bad file is set aside; one that
        cannot be read this cycle (it vanished, the access point is unreadable) waits for the next; the rest go on."""
        try:
            found = self.pending(ap, name)
        except OSError as exc:
            log.warning(
                "worker %d: access point %s not readable this cycle: %s",
                worker_id,
                ap,
                exc,
                extra={"worker_id": worker_id},
            )
            return
        for _, path in found:
            try:
                parsed = load(path)
            except ProtocolError as exc:
                self.set_aside(worker_id, path, exc)
                continue
            except OSError as exc:  # vanished or unreadable for a reason of ours: try again next cycle
                log.warning(
                    "worker %d: %s not read this cycle: %s", worker_id, path.name, exc, extra={"worker_id": worker_id}
                )
                continue
            yield path, parsed
