"""The one way the daemon and the monitor open files a pilot wrote: pilots are untrusted, their files are input.

Pilots on compute nodes write into each worker's access point; a broken or hostile one can plant a symbolic link
(to /etc/passwd, /dev/zero), a hard link to any file the daemon can read, a FIFO (a plain open blocks forever), a
file of gigabytes, or JSON of the wrong shape. So every read here:

- opens the access point with O_NOFOLLOW | O_DIRECTORY, then each part of the name relative to that descriptor
  (openat), directories with O_NOFOLLOW | O_DIRECTORY and the file with O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
  O_CLOEXEC: no symbolic link anywhere below the access point is followed, a FIFO never blocks;
- checks the open descriptor (fstat): a regular file, exactly one link, at most `cap` bytes;
- reads at most cap + 1 bytes, so a file that grows while read is still refused.

A file that fails raises :class:`Unreadable` (a ProtocolError: the agents move it aside and go on) whose
`reason` says what was wrong. The protocol files are then validated field by field by jumbo.protocol's pure
`*_from` functions. The names and results of the stream functions are jumbo.protocol's, so the pilot-file seam
(harvester_edge.seams.files) serves them to the agents and offline replay records them unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jumbo import protocol
from jumbo.protocol import ProtocolError

KiB, MiB = 1024, 1024 * 1024
STATUS_CAP = 16 * MiB  # event_status.<seq>.json: thousands of ranges fit in a few MiB
REQUEST_CAP = 1 * MiB  # worker_requestevents.<seq>.json: one small object per job
JOB_REQUEST_CAP = 64 * KiB  # worker_requestjob.<seq>.json: a sequence and a time
HEARTBEAT_CAP = 64 * KiB  # worker_heartbeat.json: a snapshot of a few counters
REPORT_CAP = 4 * MiB  # jobReport.json, worker_attributes.json
MONITOR_CAP = 4 * MiB  # prmon.<rank>.jsonl: ~200 B per sample every 10 s, some 2 days of samples
MONITOR_FILES = 64  # prmon files read per page (a chart of more ranks is unreadable anyway)
MONITOR_FILE = re.compile(r"^prmon\.(\d{1,9})\.jsonl$")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFLNK: "a symbolic link",
}


class Unreadable(ProtocolError):
    """A pilot file that is not a regular, singly linked file inside the access point under its size cap."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: unreadable: {reason}")
        self.path, self.reason = Path(path), reason


def _parts(name: str) -> list[str]:
    parts = str(name).split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{name!r} is not a plain relative name inside the access point")
    return parts


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


@contextmanager
def open_dir(ap: Path | str) -> Iterator[int]:
    """A descriptor of the access point itself (never through a symbolic link); FileNotFoundError passes."""
    try:
        fd = os.open(ap, _DIR_FLAGS)
    except FileNotFoundError:
        raise  # no access point (not made yet, or cleaned): nothing to read, no fault
    except OSError as exc:
        reason = "a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise Unreadable(ap, f"access point: {reason}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def open_file(ap: Path | str, name: str) -> Iterator[tuple[int, os.stat_result]]:
    """(descriptor, fstat) of the regular, singly linked file `name` below the access point; Unreadable otherwise.

    FileNotFoundError passes through (a file that is not there is no fault of the pilot's)."""
    path = Path(ap) / name
    try:
        parts = _parts(name)
    except ValueError as exc:
        raise Unreadable(path, str(exc)) from None
    fds: list[int] = []
    try:
        with open_dir(ap) as top:
            where = top
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    where = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=where)
                except FileNotFoundError:
                    raise
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.EMLINK) or _is_link(part, where):
                        raise Unreadable(path, f"{part} is a symbolic link") from None
                    if exc.errno == errno.ENOTDIR:
                        raise Unreadable(path, f"{part} is not a directory") from None
                    raise Unreadable(path, f"cannot open {part} ({exc.strerror})") from None
                fds.append(where)
            st = os.fstat(where)
            if not stat.S_ISREG(st.st_mode):
                raise Unreadable(path, f"{_kind(st.st_mode)}, not a regular file")
            if st.st_nlink != 1:
                raise Unreadable(path, f"a file with {st.st_nlink} hard links (another name for some other file)")
            yield where, st
    finally:
        for fd in reversed(fds):
            os.close(fd)


def read_bytes(ap: Path | str, name: str, cap: int) -> bytes:
    """The whole content of `name` below the access point, at most `cap` bytes (else Unreadable)."""
    with open_file(ap, name) as (fd, st):
        if st.st_size > cap:
            raise Unreadable(Path(ap) / name, f"{st.st_size} bytes, over the cap of {cap}")
        chunks, size = [], 0
        while size <= cap:
            chunk = os.read(fd, min(cap + 1 - size, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if size > cap:
        raise Unreadable(Path(ap) / name, f"grew over the cap of {cap} bytes while read")
    return b"".join(chunks)


def read_tail(ap: Path | str, name: str, limit: int) -> tuple[str, bool, int]:
    """(the last `limit` bytes as text, whether the start was cut, the size) of a log or stdout file."""
    with open_file(ap, name) as (fd, st):
        start = max(0, st.st_size - limit)
        os.lseek(fd, start, os.SEEK_SET)
        data = os.read(fd, limit)
    return data.decode("utf-8", "replace"), start > 0, st.st_size


def check(ap: Path | str, name: str, cap: int | None = None) -> str | None:
    """Why `name` cannot be read (its reason), or None when it can; reads nothing."""
    try:
        with open_file(ap, name) as (_, st):
            if cap is not None and st.st_size > cap:
                return f"{st.st_size} bytes, over the cap of {cap}"
    except Unreadable as exc:
        return exc.reason
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def read_json(ap: Path | str, name: str, cap: int) -> dict:
    """A protocol-1 JSON object from `name` (Unreadable or ProtocolError naming the file)."""
    return protocol.decode_json(read_bytes(ap, name, cap), Path(ap) / name)


def _split(path: Path | str) -> tuple[Path, str]:
    path = Path(path)
    return path.parent, path.name


# ---------------------------------------------------------------- the seam's operations (jumbo.protocol's names)


def pending(ap: Path | str, name: str) -> list[tuple[int, Path]]:
    """Unconsumed files of stream `name`, oldest first: names only (what they are is checked when read)."""
    return protocol.pending(ap, name)


def load_event_request(path: Path | str) -> protocol.Request:
    ap, name = _split(path)
    return protocol.event_request_from(read_json(ap, name, REQUEST_CAP), Path(path))


def load_job_request(path: Path | str) -> protocol.JobRequest:
    """A persistent pilot's request for another job (worker_requestjob.<seq>.json), read like the others."""
    ap, name = _split(path)
    return protocol.job_request_from(read_json(ap, name, JOB_REQUEST_CAP), Path(path))


def load_event_status(path: Path | str) -> protocol.Batch:
    ap, name = _split(path)
    return protocol.event_status_from(read_json(ap, name, STATUS_CAP), Path(path))


def read_heartbeat(ap: Path | str) -> dict | None:
    """The pilot's last heartbeat, validated; None before the first one."""
    try:
        return heartbeat_of(ap, protocol.HEARTBEAT)
    except FileNotFoundError:
        return None


def heartbeat_of(ap: Path | str, name: str) -> dict:
    return protocol.heartbeat_from(read_json(ap, name, HEARTBEAT_CAP), Path(ap) / name)


def _rename(path: Path | str, suffix: str) -> Path:
    ap, name = _split(path)
    with open_dir(ap) as fd:  # rename inside the access point's descriptor: a link is moved, never followed
        os.rename(name, name + suffix, src_dir_fd=fd, dst_dir_fd=fd)
    return Path(path).with_name(name + suffix)


def mark_consumed(ap: Path | str, item: protocol.Request | protocol.Batch | Path) -> Path:
    return _rename(item if isinstance(item, (str, Path)) else item.path, protocol.CONSUMED_SUFFIX)


def quarantine(path: Path | str) -> Path:
    """Move a bad pilot file aside as NAME.bad (kept for a human, never read again)."""
    return _rename(path, protocol.BAD_SUFFIX)


def write_event_ranges(ap: Path | str, seq: int, ranges, no_more=()) -> Path:
    return protocol.write_event_ranges(ap, seq, ranges, no_more=no_more)


def write_new_jobs(ap: Path | str, seq: int, jobs: list, stop: str = "") -> Path:
    return protocol.write_new_jobs(ap, seq, jobs, stop=stop)


# ---------------------------------------------------------------- what the monitor pages show


def read_report(ap: Path | str, name: str = protocol.JOB_REPORT) -> dict | None:
    """jobReport.json / worker_attributes.json as a dict (None when absent); Unreadable when it is not usable."""
    try:
        obj = read_json(ap, name, REPORT_CAP)
    except FileNotFoundError:
        return None
    return protocol.report_from(obj, Path(ap) / name)


def _monitor_rank(name: str) -> int:
    """The rank of a monitor file's name (one MONITOR_FILE matched: listed by that pattern)."""
    match = MONITOR_FILE.match(name)
    if match is None:
        raise ValueError(f"{name} is not a monitor file name")
    return int(match.group(1))


def read_monitor(ap: Path | str) -> tuple[dict[int, list[dict]], dict[str, str]]:
    """prmon samples per rank and {file name: reason} for the files or lines that were unusable."""
    samples: dict[int, list[dict]] = {}
    problems: dict[str, str] = {}
    try:
        names = sorted(e.name for e in os.scandir(ap) if MONITOR_FILE.match(e.name))
    except FileNotFoundError:
        return samples, problems
    except OSError as exc:
        return samples, {"(access point)": exc.strerror or str(exc)}
    names.sort(key=_monitor_rank)
    if len(names) > MONITOR_FILES:
        problems[f"{names[MONITOR_FILES]} and {len(names) - MONITOR_FILES - 1} more"] = (
            f"not read: only the first {MONITOR_FILES} ranks are shown"
        )
        names = names[:MONITOR_FILES]
    for name in names:
        try:
            lines = read_bytes(ap, name, MONITOR_CAP).split(b"\n")[:-1]  # the last line may be half written
        except Unreadable as exc:
            problems[name] = exc.reason
            continue
        except OSError as exc:
            problems[name] = exc.strerror or str(exc)
            continue
        rows, bad = [], 0
        for line in lines:
            try:
                row = json.loads(line) if line.strip() else None
            except (ValueError, RecursionError):
                row = None
                bad += 1
            if isinstance(row, dict):
                rows.append(row)
            elif row is not None:
                bad += 1
        if bad:
            problems[name] = f"{bad} line(s) that are not JSON objects were skipped"
        samples[_monitor_rank(name)] = rows
    return samples, problems


# ---------------------------------------------------------------- payload logs (jumbo.paylog): shipped in batches

PAYLOG_FILE = re.compile(r"^payload\.(\d{1,9})\.jsonl$")  # in the access point's logs/ folder
PAYLOG_CAP = 1024 * MiB  # a payload log larger than this is refused (the pilot bounds it at payload_log_max_mb)
PAYLOG_CHUNK = 1 * MiB  # bytes read from one file per call: a batch
PAYLOG_FILES = 4096  # names looked at per access point
PAYLOG_STREAMS = ("stdout", "stderr", "meta")


def payload_logs(ap: Path | str) -> list[str]:
    """The payload log files' names below the access point (logs/payload.<rank>.jsonl), by rank; what they are is
    checked when read. A logs/ that is a symbolic link or not a directory is Unreadable."""
    with open_dir(ap) as top:
        try:
            fd = os.open("logs", _DIR_FLAGS, dir_fd=top)
        except FileNotFoundError:
            return []
        except OSError as exc:
            reason = "a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
            raise Unreadable(Path(ap) / "logs", f"logs: {reason}") from None
        try:
            names = [e.name for e in os.scandir(fd) if PAYLOG_FILE.match(e.name)][:PAYLOG_FILES]
        finally:
            os.close(fd)
    return sorted(names, key=lambda n: int(n.split(".")[1]))


def _clean(text: str) -> str:
    """Text any JSON encoder and database takes: a lone surrogate (a \\ud800 escape) becomes '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _paylog_record(obj: Any) -> dict | None:
    """A payload log record with the fields the central service takes, or None when it is not one."""
    if not isinstance(obj, dict):
        return None
    job, rank, stream, msg, when = obj.get("job"), obj.get("rank"), obj.get("stream"), obj.get("msg"), obj.get("time")
    # within what the service takes (central/models.py LogRecord): a record it would refuse would stall its file
    ints_ok = all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= high
        for v, high in ((job, 2**62), (rank, protocol.MAX_COUNT))
    )
    if not ints_ok or stream not in PAYLOG_STREAMS or not isinstance(msg, str):
        return None
    if isinstance(when, bool) or not isinstance(when, (int, float)) or not 0 <= when <= protocol.MAX_TIME:
        return None
    rng, task = obj.get("range"), obj.get("task")
    return {
        "job": job,
        "task": task if isinstance(task, int) and not isinstance(task, bool) and 0 <= task <= 2**62 else None,
        "rank": rank,
        "range": _clean(rng[: protocol.MAX_ID_CHARS]) if isinstance(rng, str) else None,
        "stream": stream,
        "time": float(when),
        "msg": _clean(msg[:16384]),
        "truncated": obj.get("truncated") is True,
    }


def read_payload_log(ap: Path | str, name: str, offset: int, limit: int = PAYLOG_CHUNK) -> dict:
    """The complete lines of logs/`name` from byte `offset`, at most `limit` bytes: {"records": [record with its
    "offset"], "offset": where the next read starts, "size": the file's size, "skipped": lines that were not
    payload log records (invalid JSON, wrong fields)}. Unreadable when the file is not a regular, singly linked
    file under PAYLOG_CAP or is shorter than `offset` (replaced or cut by someone)."""
    if not PAYLOG_FILE.match(name):
        raise Unreadable(Path(ap) / "logs" / name, "not a payload log name (payload.<rank>.jsonl)")
    rel = f"logs/{name}"
    with open_file(ap, rel) as (fd, st):
        if st.st_size > PAYLOG_CAP:
            raise Unreadable(Path(ap) / rel, f"{st.st_size} bytes, over the cap of {PAYLOG_CAP}")
        if st.st_size < offset:
            raise Unreadable(Path(ap) / rel, f"{st.st_size} bytes, shorter than the {offset} already read")
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, min(limit, st.st_size - offset))
    end = data.rfind(b"\n")
    if end < 0:
        if len(data) >= limit:  # a "line" longer than a whole batch: not the pilot's; skipped
            return {"records": [], "offset": offset + len(data), "size": st.st_size, "skipped": 1}
        return {"records": [], "offset": offset, "size": st.st_size, "skipped": 0}  # a line still being written
    records, skipped, at = [], 0, offset
    for line in data[: end + 1].split(b"\n")[:-1]:
        here, at = at, at + len(line) + 1
        if not line.strip():
            continue
        try:
            rec = _paylog_record(json.loads(line))
        except (ValueError, RecursionError):
            rec = None
        if rec is None:
            skipped += 1
            continue
        rec["offset"] = here
        records.append(rec)
    return {"records": records, "offset": offset + end + 1, "size": st.st_size, "skipped": skipped}
