"""The shared-file messenger between the harvester and a jumbo pilot: file formats and both sides' functions.

The access point (``ap``) is one directory per worker on a file system that the edge node and the compute nodes
share. Every file carries ``"protocol": 1``; a file with another version, invalid JSON, a missing field or a field
of the wrong type or range (``"time": "abc"``, a string errorCode, a negative nRanges) raises :class:`ProtocolError`
naming the file and the field; the ``*_from`` functions validate a decoded object (pure), so the harvester reads
pilot files, which it treats as untrusted input, through its own safe reader (``harvester_edge.pilot_files``) and
validates them here. Every file is written atomically (temporary file in the same directory,
fsync, then rename), so a reader never sees half a file. Streams are rotated files with a sequence number in the
name (``NAME.<seq>.json``); the reader renames each file to ``NAME.<seq>.json.read`` once consumed
(:func:`mark_consumed`), so nothing is read twice or lost when a reader and a writer race. A sequence number is
never written twice (the write fails if ``NAME.<seq>.json`` or its ``.read``/``.bad`` twin exists).

Files (Harvester's names where they fit), one example each:

``HPCJobs.json`` (harvester -> pilot, the job spec; :func:`write_job_spec` / :func:`read_job_spec`)::

    {"protocol": 1,
     "jobs": [{"PandaID": 1001, "taskID": 77, "jobsetID": 5,
               "payload": {"callable": "jumbo.payloads:simulate", "args": {"size": 4096}, "isolation": "worker"}}],
     "pilot": {"end_time": 1790000000.0, "heartbeat_interval": 30, "prefetch": 1, "mode": "file",
               "n_ranges": 8, "safety_margin": 60, "status_flush_interval": 1.0,
               "central_url": "https://edge:8443", "token_file": "/ap/token"}}

  A payload is ``{"callable": "module:function"}`` (called as ``run(first_event, last_event, output_path,
  context)``) or ``{"command": ["prog", "--from", "{first_event}", "--to", "{last_event}", "-o", "{output}",
  "--rank", "{rank}", "--seed", "{seed}"]}``; ``isolation`` is ``worker`` (a long-lived child process per rank,
  restarted if it dies), ``process`` (a fresh child process per range) or ``inline`` (in the rank itself: fastest,
  but a crash ends the pilot; for short trusted callables); commands always get a fresh process.
  ``output`` (default true) false: the payload writes no output file, finished ranges then carry no path/fsize/
  adler32. ``suffix`` is the output file's suffix (default ".out"); outputs go to ``<ap>/outputs/<PandaID>/``.
  ``mode`` is ``file`` (ranges through this directory) or ``http`` (straight from the central service's /api/v1).

``worker_requestevents.<seq>.json`` (pilot -> harvester; :func:`write_event_request` / :func:`read_event_requests`)::

    {"protocol": 1, "seq": 3, "time": 1790000000.5,
     "requests": {"1001": {"pandaID": 1001, "taskID": 77, "jobsetID": 5, "nRanges": 8}}}

``JobsEventRanges.<seq>.json`` (harvester -> pilot, answers request ``seq``; seq 0 may pre-stage ranges before
the pilot starts; :func:`write_event_ranges` / :func:`read_event_ranges`)::

    {"protocol": 1, "seq": 3,
     "ranges": {"1001": [{"eventRangeID": "77-1001-1-3-1", "startEvent": 20, "lastEvent": 29,
                          "LFN": "EVNT.01.root", "GUID": "g-1", "scope": "mc"}]},
     "no_more": [1001]}

  ``no_more`` lists the jobs for which the harvester has no ranges left: the pilot asks no more for them. In a
  task's tail the harvester may leave a request unanswered for a while (ranges in flight elsewhere may come back)
  and answers it when they do, or with ``no_more`` when none can; an answer with no ranges and no ``no_more``
  means "ask again a little later". The pilot has one request open at a time.

``event_status.<seq>.json`` (pilot -> harvester; :func:`write_event_status` / :func:`read_event_status`)::

    {"protocol": 1, "seq": 12, "time": 1790000100.0,
     "events": {"1001": [{"eventRangeID": "77-1001-1-3-1", "eventStatus": "finished", "nEvents": 10,
                          "path": "/ap/outputs/1001/77-1001-1-3-1.npy", "fsize": 2048, "adler32": "0a1b2c3d",
                          "startTime": 1790000090.0, "endTime": 1790000099.5, "cpuTime": 9.4, "rank": 2,
                          "errorCode": 0, "errorDiag": ""}]}}

  ``eventStatus`` is ``finished`` (output verified on disk), ``failed`` (payload error; errorCode/errorDiag say
  why) or ``not-done`` (never run, or stopped by the walltime/drain: hand it out again).

``worker_requestjob.<seq>.json`` (pilot -> harvester: a persistent pilot out of ranges asks for another job;
:func:`write_job_request` / :func:`job_request_from`)::

    {"protocol": 1, "seq": 1, "time": 1790000300.0}

``worker_newjob.<seq>.json`` (harvester -> pilot, answers job request ``seq``; :func:`write_new_jobs` /
:func:`load_new_jobs`)::

    {"protocol": 1, "seq": 1, "jobs": [{"PandaID": 1002, "taskID": 78, "jobsetID": 78, "payload": {...}}],
     "stop": ""}

  ``jobs`` as in ``HPCJobs.json``; no jobs and a ``stop`` reason (the queue drains, the worker is to end): the
  pilot ends. A request stays unanswered while there is no job for it; the pilot ends at its ``idle_timeout``.

``worker_heartbeat.json`` (pilot -> harvester, a snapshot rewritten every ``heartbeat_interval``)::

    {"protocol": 1, "time": 1790000100.0, "state": "running", "pid": 4242, "ranks": 4,
     "counts": {"finished": 40, "failed": 1, "not-done": 0, "queued": 8, "in_flight": 4}}

``worker_attributes.json`` (pilot -> harvester, final state) and ``jobReport.json`` (final metrics)::

    {"protocol": 1, "workerStatus": "finished", "pilotErrorCode": 0, "pilotErrorDiag": "",
     "jobs": {"1001": {"jobStatus": "finished", "nEventsFinished": 400, "nEventsFailed": 10,
                       "nEventsNotDone": 0, "manifest": "/ap/outputs/1001.manifest.json"}}}

    {"protocol": 1, "wallTime": 61.2, "ranks": 4, "cpuTime": 230.1, "endReason": "no more ranges",
     "maxRSS": 123456, "maxPSS": 100000, "perRank": {"0": {"maxRSS": 123456, "maxPSS": 100000, ...}},
     "jobs": {"1001": {...counts as above...}}}

``kill_worker.json`` (harvester -> pilot: drain now; :func:`request_drain` / :func:`drain_requested`)::

    {"protocol": 1, "time": 1790000200.0, "reason": "task killed"}

``prmon.<rank>.jsonl`` (pilot, one JSON sample per line, appended; a last line without newline is incomplete)::

    {"time": 1790000100.0, "rank": 1, "rss": 1234, "pss": 1000, "vmem": 5678, "utime": 1.2, "stime": 0.1,
     "read_bytes": 0, "write_bytes": 4096, "nprocs": 2}

``logs/payload.<rank>.jsonl`` (pilot, the payload's stdout/stderr, one JSON record per line, appended, at most
``payload_log_max_mb`` per rank; see jumbo.paylog)::

    {"time": 1790000100.25, "task": 77, "job": 1001, "worker": 12, "rank": 2, "range": "77-1001-1-3-1",
     "stream": "stdout", "msg": "event 20 done"}
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1

JOB_SPEC = "HPCJobs.json"
REQUESTS = "worker_requestevents"
RANGES = "JobsEventRanges"
STATUS = "event_status"
HEARTBEAT = "worker_heartbeat.json"
ATTRIBUTES = "worker_attributes.json"
JOB_REPORT = "jobReport.json"
KILL = "kill_worker.json"
JOB_REQUESTS = "worker_requestjob"
NEW_JOBS = "worker_newjob"
MONITOR = "prmon.{rank}.jsonl"

EVENT_STATUSES = ("finished", "failed", "not-done")
ISOLATIONS = ("worker", "process", "inline")
MODES = ("file", "http")
CONSUMED_SUFFIX = ".read"
BAD_SUFFIX = ".bad"

PILOT_DEFAULTS: dict[str, Any] = {
    "end_time": None,  # epoch seconds; None: from the option, Slurm's environment, walltime or never
    "walltime": None,  # seconds from the pilot's start, when no end time is known
    "heartbeat_interval": 30.0,  # seconds between worker_heartbeat.json rewrites
    "prefetch": 1,  # ranges queued on each rank beyond the one it runs
    "mode": "file",
    "n_ranges": None,  # ranges per request; None: 2 x ranks x (prefetch + 1)
    "safety_margin": 60.0,  # seconds kept free before end_time for the final reports
    "status_flush_interval": 1.0,
    "monitor_interval": 10.0,
    "poll_interval": 0.2,  # how often rank 0 looks for new ranges files
    # a payload with no output and no CPU progress for this long is looping: killed, its range failed (code 1150)
    "looping_timeout": 1800.0,
    "min_free_disk_mb": 1024,  # below this free in the access point's file system the pilot drains
    "disk_check_interval": 60.0,
    # each rank's payload stdout/stderr as JSON lines, logs/payload.<rank>.jsonl (jumbo.paylog), at most this big
    "payload_log_max_mb": 64.0,
    # a persistent pilot (seconds > 0): out of ranges, it asks for another job and waits this long for one
    "idle_timeout": 0.0,
    "central_url": None,
    "token_file": None,
}


class ProtocolError(Exception):
    """A messenger file is malformed, has an unknown protocol version, or a sequence number is reused."""


@dataclass(frozen=True)
class Request:
    """One event request of the pilot: {PandaID: {pandaID, taskID, jobsetID, nRanges}}."""

    seq: int
    path: Path
    time: float
    requests: dict[int, dict]


@dataclass(frozen=True)
class Ranges:
    """One ranges file of the harvester: answers request ``seq``; ``no_more`` jobs get no further ranges."""

    seq: int
    path: Path
    ranges: dict[int, list[dict]]
    no_more: frozenset[int]


@dataclass(frozen=True)
class JobRequest:
    """A persistent pilot's request for another job."""

    seq: int
    path: Path
    time: float


@dataclass(frozen=True)
class NewJobs:
    """The harvester's answer to job request ``seq``: jobs to run next, or none and why the pilot is to stop."""

    seq: int
    path: Path
    jobs: list[dict]
    stop: str


@dataclass(frozen=True)
class Batch:
    """One event status file of the pilot: {PandaID: [status entries]}."""

    seq: int
    path: Path
    time: float
    events: dict[int, list[dict]]


# ---------------------------------------------------------------- low-level file helpers


def write_json_atomic(path: Path | str, obj: Mapping, exclusive: bool = False) -> Path:
    """Write ``obj`` (plus "protocol") to ``path`` via a temporary file, fsync and rename.

    With ``exclusive`` the file must not exist yet (nor its .read/.bad twins): the sequence is then never reused.
    """
    path = Path(path)
    body = dict(obj)
    body["protocol"] = PROTOCOL_VERSION
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.unlink()  # a leftover of a crash (or something planted there): never written through
    except FileNotFoundError:
        pass
    # O_EXCL | O_NOFOLLOW: the other side shares this directory; a link planted under the temporary name is refused
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    with open(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if exclusive:
            for twin in (path.with_name(path.name + CONSUMED_SUFFIX), path.with_name(path.name + BAD_SUFFIX)):
                if twin.exists():
                    raise ProtocolError(f"{path}: sequence already used ({twin.name} exists); take the next one")
            try:
                os.link(tmp, path)  # atomic no-clobber
            except FileExistsError as exc:
                raise ProtocolError(f"{path}: sequence already used; take the next one") from exc
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise ProtocolError(f"{path}: sequence already used; take the next one") from None
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_json(path: Path | str) -> dict:
    """Read one messenger file; raise ProtocolError naming it when it is not a protocol-1 JSON object."""
    path = Path(path)
    with open(path, "rb") as fh:
        return decode_json(fh.read(), path)


def decode_json(data: bytes, path: Path | str) -> dict:
    """The protocol-1 JSON object in ``data`` (the content of ``path``); ProtocolError naming the file otherwise."""
    path = Path(path)
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{path}: not valid JSON ({exc}); the writer must write it atomically") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    version = obj.get("protocol")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"{path}: unknown protocol version {version!r} (this side speaks {PROTOCOL_VERSION})")
    return obj


def _read_optional(path: Path) -> dict | None:
    try:
        return read_json(path)
    except FileNotFoundError:
        return None


def stream_path(ap: Path | str, name: str, seq: int) -> Path:
    """The path of file ``seq`` of stream ``name`` (REQUESTS, RANGES or STATUS)."""
    return Path(ap) / f"{name}.{int(seq)}.json"


def pending(ap: Path | str, name: str) -> list[tuple[int, Path]]:
    """Unconsumed files of stream ``name``, oldest sequence first."""
    pattern = re.compile(rf"^{re.escape(name)}\.(\d+)\.json$")
    found = []
    for entry in os.scandir(ap):
        m = pattern.match(entry.name)
        if m:
            found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


def next_seq(ap: Path | str, name: str) -> int:
    """One more than the highest sequence of stream ``name`` ever written here (consumed or not); 1 if none."""
    pattern = re.compile(rf"^{re.escape(name)}\.(\d+)\.json(\.read|\.bad)?$")
    seqs = [int(m.group(1)) for m in (pattern.match(e.name) for e in os.scandir(ap)) if m]
    return max(seqs, default=0) + 1


def mark_consumed(ap: Path | str, item: Request | Ranges | Batch | Path) -> Path:
    """Rename a consumed stream file to ``<name>.read`` so nobody reads it again."""
    path = Path(item if isinstance(item, (str, Path)) else item.path)
    done = path.with_name(path.name + CONSUMED_SUFFIX)
    os.replace(path, done)
    return done


def quarantine(path: Path | str) -> Path:
    """Rename a malformed stream file to ``<name>.bad``: kept for a human, never read again."""
    path = Path(path)
    bad = path.with_name(path.name + BAD_SUFFIX)
    os.replace(path, bad)
    return bad


MAX_ID = 2**63 - 1  # PandaIDs, sequence numbers: what SQLite's INTEGER holds
MAX_TIME = 1e11  # epoch seconds (year 5138): beyond it a time is garbage, not a date
MAX_COUNT = 2**31 - 1  # events, ranks, error codes and other counts
MAX_ID_CHARS = 256  # an eventRangeID


def _int_keys(obj: Any, path: Path, what: str) -> dict[int, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{path}: '{what}' must be an object keyed by PandaID, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and 0 < int(key) <= MAX_ID):
            raise ProtocolError(f"{path}: '{what}' has a key that is not a PandaID ({key[:40]!r})")
        out[int(key)] = value
    return out


def _need(obj: Mapping, key: str, kind: type | tuple, path: Path, where: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{path}: {where} lacks '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"{path}: {where} '{key}' has the wrong type ({type(value).__name__})")
    return value


def _number(
    obj: Mapping,
    key: str,
    path: Path,
    where: str,
    hi: float,
    required: bool = False,
    integer: bool = False,
    lo: float = 0,
) -> Any:
    """``obj[key]`` as a finite number in [lo, hi] (an int when ``integer``); None when absent and not required."""
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise ProtocolError(f"{path}: {where} lacks '{key}'")
        return None
    value = obj[key]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an integer" if integer else "a number"
        raise ProtocolError(
            f"{path}: {where} '{key}' must be {expected}, got {type(value).__name__} {str(value)[:40]!r}"
        )
    if not (lo <= value <= hi):  # NaN fails too
        raise ProtocolError(f"{path}: {where} '{key}' is {str(value)[:40]}, outside {lo:g}..{hi:g}")
    return value


def _text(obj: Mapping, key: str, path: Path, where: str, required: bool = False) -> str | None:
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise ProtocolError(f"{path}: {where} lacks '{key}'")
        return None
    if not isinstance(obj[key], str):
        raise ProtocolError(f"{path}: {where} '{key}' must be a string, got {type(obj[key]).__name__}")
    return obj[key]


# key: (lowest, highest, integer); an error code may be negative (a signal, a payload's own code)
STATUS_NUMBERS = {
    "nEvents": (0, MAX_COUNT, True),
    "startTime": (0, MAX_TIME, False),
    "endTime": (0, MAX_TIME, False),
    "cpuTime": (0, MAX_TIME, False),
    "rank": (0, MAX_COUNT, True),
    "errorCode": (-MAX_COUNT, MAX_COUNT, True),
    "fsize": (0, MAX_ID, True),
    "maxPSS": (0, MAX_ID, True),  # kB: the rank's peak PSS while the range ran (scouts, central/scouts.py)
}
STATUS_TEXTS = ("errorDiag", "path", "adler32")


def validate_status_entry(ev: Any, path: Path, pid: int) -> dict:
    """Check one event status entry: eventRangeID, eventStatus and the type and range of every known field."""
    where = f"a status of job {pid}"
    if not isinstance(ev, dict):
        raise ProtocolError(f"{path}: {where} must be an object, got {type(ev).__name__}")
    rid = _text(ev, "eventRangeID", path, where, required=True)
    if not rid or len(rid) > MAX_ID_CHARS:
        raise ProtocolError(f"{path}: {where} has an eventRangeID of {len(rid or '')} characters (1..{MAX_ID_CHARS})")
    if ev.get("eventStatus") not in EVENT_STATUSES:
        raise ProtocolError(
            f"{path}: range {rid} has eventStatus {str(ev.get('eventStatus'))[:40]!r}, not one of {EVENT_STATUSES}"
        )
    for key, (lo, hi, integer) in STATUS_NUMBERS.items():
        _number(ev, key, path, f"range {rid}", hi, integer=integer, lo=lo)
    for key in STATUS_TEXTS:
        _text(ev, key, path, f"range {rid}")
    return ev


def validate_range(rng: Any, path: Path) -> dict:
    """Check one event range dict: eventRangeID (str), startEvent <= lastEvent (ints)."""
    if not isinstance(rng, dict):
        raise ProtocolError(f"{path}: an event range must be an object, got {type(rng).__name__}")
    rid = _need(rng, "eventRangeID", str, path, "an event range")
    first = _need(rng, "startEvent", int, path, f"range {rid}")
    last = _need(rng, "lastEvent", int, path, f"range {rid}")
    if last < first:
        raise ProtocolError(f"{path}: range {rid} has lastEvent {last} < startEvent {first}")
    return rng


# ---------------------------------------------------------------- parse functions (pure apart from the read)


def load_job_spec(path: Path | str) -> dict:
    """Parse and validate HPCJobs.json; fill the pilot settings' defaults."""
    path = Path(path)
    obj = read_json(path)
    jobs = obj.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise ProtocolError(f"{path}: 'jobs' must be a non-empty list")
    _validate_jobs(jobs, path)
    pilot = dict(PILOT_DEFAULTS)
    pilot.update(obj.get("pilot") or {})
    if pilot["mode"] not in MODES:
        raise ProtocolError(f"{path}: pilot mode {pilot['mode']!r} is not one of {MODES}")
    if pilot["mode"] == "http" and not pilot.get("central_url"):
        raise ProtocolError(f"{path}: pilot mode 'http' needs 'central_url'")
    obj["pilot"] = pilot
    return obj


def _validate_jobs(jobs: list, path: Path) -> None:
    """Each job of a job spec (or of a persistent pilot's next jobs): PandaID, taskID and a payload."""
    for job in jobs:
        if not isinstance(job, dict):
            raise ProtocolError(f"{path}: each job must be an object")
        pid = _need(job, "PandaID", int, path, "a job")
        _need(job, "taskID", int, path, f"job {pid}")
        payload = _need(job, "payload", dict, path, f"job {pid}")
        if ("callable" in payload) == ("command" in payload):
            raise ProtocolError(f"{path}: job {pid} payload needs exactly one of 'callable' or 'command'")
        if payload.get("isolation", "worker") not in ISOLATIONS:
            raise ProtocolError(f"{path}: job {pid} payload isolation must be one of {ISOLATIONS}")


def load_event_request(path: Path | str) -> Request:
    return event_request_from(read_json(path), Path(path))


def event_request_from(obj: dict, path: Path) -> Request:
    """Validate a decoded request file: seq, time and per job an object with nRanges >= 1 (pure)."""
    seq = _number(obj, "seq", path, "the request", MAX_ID, required=True, integer=True)
    when = _number(obj, "time", path, "the request", MAX_TIME) or 0.0
    reqs = _int_keys(obj.get("requests"), path, "requests")
    for pid, req in reqs.items():
        where = f"request for job {pid}"
        if not isinstance(req, dict):
            raise ProtocolError(f"{path}: {where} must be an object, got {type(req).__name__}")
        if _number(req, "nRanges", path, where, MAX_ID, required=True, integer=True) < 1:
            raise ProtocolError(f"{path}: {where} 'nRanges' must be at least 1")
        for key in ("pandaID", "taskID", "jobsetID"):
            _number(req, key, path, where, MAX_ID, integer=True)
    return Request(seq=seq, path=path, time=float(when), requests=reqs)


def job_request_from(obj: dict, path: Path) -> JobRequest:
    """Validate a decoded job request: seq and time (pure)."""
    seq = _number(obj, "seq", path, "the job request", MAX_ID, required=True, integer=True)
    when = _number(obj, "time", path, "the job request", MAX_TIME) or 0.0
    return JobRequest(seq=seq, path=path, time=float(when))


def load_new_jobs(path: Path | str) -> NewJobs:
    """A harvester's answer to a job request: its jobs validated like the job spec's."""
    path = Path(path)
    obj = read_json(path)
    seq = _need(obj, "seq", int, path, "the new jobs file")
    jobs = obj.get("jobs", [])
    if not isinstance(jobs, list):
        raise ProtocolError(f"{path}: 'jobs' must be a list")
    _validate_jobs(jobs, path)
    stop = obj.get("stop") or ""
    if not isinstance(stop, str):
        raise ProtocolError(f"{path}: 'stop' must be a string")
    if not jobs and not stop:
        raise ProtocolError(f"{path}: neither jobs nor a 'stop' reason")
    return NewJobs(seq=seq, path=path, jobs=jobs, stop=stop)


def load_event_ranges(path: Path | str) -> Ranges:
    path = Path(path)
    obj = read_json(path)
    seq = _need(obj, "seq", int, path, "the ranges file")
    ranges = _int_keys(obj.get("ranges", {}), path, "ranges")
    for pid, lst in ranges.items():
        if not isinstance(lst, list):
            raise ProtocolError(f"{path}: ranges of job {pid} must be a list")
        for rng in lst:
            validate_range(rng, path)
    no_more = obj.get("no_more", [])
    if not isinstance(no_more, list):
        raise ProtocolError(f"{path}: 'no_more' must be a list of PandaIDs")
    try:
        no_more_ids = frozenset(int(x) for x in no_more)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{path}: 'no_more' holds a value that is not a PandaID") from exc
    return Ranges(seq=seq, path=path, ranges=ranges, no_more=no_more_ids)


def load_event_status(path: Path | str) -> Batch:
    return event_status_from(read_json(path), Path(path))


def event_status_from(obj: dict, path: Path) -> Batch:
    """Validate a decoded status file: seq, time and every entry's fields (:func:`validate_status_entry`; pure)."""
    seq = _number(obj, "seq", path, "the status file", MAX_ID, required=True, integer=True)
    when = _number(obj, "time", path, "the status file", MAX_TIME) or 0.0
    events = _int_keys(obj.get("events"), path, "events")
    for pid, lst in events.items():
        if not isinstance(lst, list):
            raise ProtocolError(f"{path}: events of job {pid} must be a list, got {type(lst).__name__}")
        for ev in lst:
            validate_status_entry(ev, path, pid)
    return Batch(seq=seq, path=path, time=float(when), events=events)


def report_from(obj: dict, path: Path) -> dict:
    """Validate a decoded jobReport.json / worker_attributes.json: the fields the harvester shows (pure)."""
    for key in ("wallTime", "cpuTime", "maxRSS", "maxPSS"):
        _number(obj, key, path, "the report", MAX_ID)
    for key in ("endReason", "workerStatus"):
        _text(obj, key, path, "the report")
    return obj


def heartbeat_from(obj: dict, path: Path) -> dict:
    """Validate a decoded heartbeat: time (required), state, pid, ranks and counts (pure)."""
    _number(obj, "time", path, "the heartbeat", MAX_TIME, required=True)
    _text(obj, "state", path, "the heartbeat")
    for key in ("pid", "ranks"):
        _number(obj, key, path, "the heartbeat", MAX_COUNT, integer=True)
    counts = obj.get("counts")
    if counts is not None:
        if not isinstance(counts, dict):
            raise ProtocolError(f"{path}: the heartbeat 'counts' must be an object, got {type(counts).__name__}")
        for key in counts:
            _number(counts, key, path, "the heartbeat counts", MAX_ID, integer=True)
    return obj


def _load_all(ap: Path | str, name: str, loader) -> list:
    return [loader(path) for _, path in pending(ap, name)]


# ---------------------------------------------------------------- harvester side


def write_job_spec(ap: Path | str, spec: Mapping) -> Path:
    """Write HPCJobs.json; the spec is validated by reading it back, so a bad spec fails here, not on the node."""
    path = write_json_atomic(Path(ap) / JOB_SPEC, spec)
    load_job_spec(path)
    return path


def read_event_requests(ap: Path | str) -> list[Request]:
    """Unconsumed event requests, oldest first; call :func:`mark_consumed` on each once answered."""
    return _load_all(ap, REQUESTS, load_event_request)


def write_event_ranges(
    ap: Path | str, seq: int, ranges: Mapping[int, Iterable[Mapping]], no_more: Iterable[int] = ()
) -> Path:
    """Answer request ``seq`` with {PandaID: [ranges]}; ``no_more``: jobs that will get no further ranges."""
    body = {
        "seq": int(seq),
        "time": time.time(),
        "ranges": {str(pid): [dict(r) for r in lst] for pid, lst in ranges.items()},
        "no_more": sorted(int(p) for p in no_more),
    }
    path = stream_path(ap, RANGES, seq)
    for lst in ranges.values():
        for rng in lst:
            validate_range(rng, path)
    return write_json_atomic(path, body, exclusive=True)


def write_new_jobs(ap: Path | str, seq: int, jobs: Sequence[Mapping], stop: str = "") -> Path:
    """Answer job request ``seq`` with the jobs to run next (as in HPCJobs.json), or none and why to stop."""
    path = stream_path(ap, NEW_JOBS, seq)
    entries = [dict(j) for j in jobs]
    _validate_jobs(entries, path)
    body = {"seq": int(seq), "time": time.time(), "jobs": entries, "stop": stop}
    if not jobs and not stop:
        raise ProtocolError(f"{path}: an answer needs jobs or a stop reason")
    return write_json_atomic(path, body, exclusive=True)


def read_event_status(ap: Path | str) -> list[Batch]:
    """Unconsumed event status batches, oldest first; call :func:`mark_consumed` on each once propagated."""
    return _load_all(ap, STATUS, load_event_status)


def read_heartbeat(ap: Path | str) -> dict | None:
    """The pilot's last heartbeat snapshot, or None before the first one."""
    return _read_optional(Path(ap) / HEARTBEAT)


def read_worker_attributes(ap: Path | str) -> dict | None:
    """The pilot's final state (workerStatus, per-job jobStatus and counts), or None while it runs."""
    return _read_optional(Path(ap) / ATTRIBUTES)


def read_job_report(ap: Path | str) -> dict | None:
    """The pilot's final metrics (events, CPU time, max RSS/PSS per rank), or None while it runs."""
    return _read_optional(Path(ap) / JOB_REPORT)


def request_drain(ap: Path | str, reason: str = "") -> Path:
    """Ask the pilot to drain: finish in-flight ranges, report the rest not-done, exit."""
    return write_json_atomic(Path(ap) / KILL, {"time": time.time(), "reason": reason})


def read_monitor(ap: Path | str) -> dict[int, list[dict]]:
    """The prmon-like samples per rank; an incomplete last line (being written) is skipped."""
    out: dict[int, list[dict]] = {}
    for entry in os.scandir(ap):
        m = re.match(r"^prmon\.(\d+)\.jsonl$", entry.name)
        if not m:
            continue
        with open(entry.path, "rb") as fh:
            lines = fh.read().split(b"\n")
        out[int(m.group(1))] = [json.loads(line) for line in lines[:-1] if line.strip()]
    return out


# ---------------------------------------------------------------- pilot side


def read_job_spec(ap: Path | str) -> dict:
    """The job spec the harvester wrote, validated, with the pilot settings' defaults filled."""
    return load_job_spec(Path(ap) / JOB_SPEC)


def write_event_request(ap: Path | str, seq: int, requests: Mapping[int, Mapping]) -> Path:
    """Ask for ranges: {PandaID: {pandaID, taskID, jobsetID, nRanges}} under a new sequence number."""
    body = {"seq": int(seq), "time": time.time(), "requests": {str(k): dict(v) for k, v in requests.items()}}
    return write_json_atomic(stream_path(ap, REQUESTS, seq), body, exclusive=True)


def write_job_request(ap: Path | str, seq: int) -> Path:
    """A persistent pilot out of ranges asks for another job under a new sequence number."""
    return write_json_atomic(stream_path(ap, JOB_REQUESTS, seq), {"seq": int(seq), "time": time.time()}, exclusive=True)


def read_event_ranges(ap: Path | str) -> list[Ranges]:
    """Unconsumed ranges files, oldest first (raises ProtocolError at the first malformed one)."""
    return _load_all(ap, RANGES, load_event_ranges)


def write_event_status(ap: Path | str, seq: int, events: Mapping[int, Iterable[Mapping]]) -> Path:
    """Report finished/failed/not-done ranges under a new sequence number."""
    body = {
        "seq": int(seq),
        "time": time.time(),
        "events": {str(pid): [dict(e) for e in lst] for pid, lst in events.items()},
    }
    return write_json_atomic(stream_path(ap, STATUS, seq), body, exclusive=True)


def write_heartbeat(ap: Path | str, snapshot: Mapping) -> Path:
    return write_json_atomic(Path(ap) / HEARTBEAT, {"time": time.time(), **snapshot})


def write_worker_attributes(ap: Path | str, attributes: Mapping) -> Path:
    return write_json_atomic(Path(ap) / ATTRIBUTES, attributes)


def write_job_report(ap: Path | str, report: Mapping) -> Path:
    return write_json_atomic(Path(ap) / JOB_REPORT, report)


def drain_requested(ap: Path | str) -> dict | None:
    """The harvester's kill_worker.json if present (a malformed one still means: drain)."""
    path = Path(ap) / KILL
    if not path.exists():
        return None
    try:
        return read_json(path)
    except ProtocolError as exc:
        return {"reason": f"unreadable {KILL}: {exc}"}
