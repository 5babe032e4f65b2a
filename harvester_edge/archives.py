"""Archives of ended access points: before the sweeper removes a worker's access point, its logs, job report and
monitoring data go into `<paths.archives>/worker-<id>.tar.gz`, which the monitor links and the sweeper removes
`daemon.keep_history` after it was written.

What the pilot wrote is untrusted: each file is opened from the access point's descriptor without following links
(harvester_edge.pilot_files.open_file), and only regular, singly linked files go in; a symbolic link, FIFO, device or
hard link is listed in the archive's MANIFEST.json as skipped, with the reason. The outputs/ folder (the payload's
data products) and the event-range hand-off files stay out. The archive is capped (`daemon.archive_max_mb`): a file
that does not fit in what is left keeps its last bytes (the end of a log says why it ended) and is marked truncated.
The archive is written under a temporary name and renamed, so a crash leaves no half-written archive under the
final name (a stale temporary is replaced by the next attempt).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from harvester_edge import pilot_files
from harvester_edge.filemodes import private_dir

ARCHIVE = re.compile(r"^worker-(\d{1,18})\.tar\.gz$")
SUBDIRS = ("logs",)  # folders of the access point whose files are archived (beside the top level's)
# the event-range hand-off streams (consumed or not) and temporaries: the bookkeeping DB holds what they said
LEFT_OUT = re.compile(r"^(worker_requestevents|JobsEventRanges|event_status)\.\d+\.json|\.(tmp|read|bad)$")
MAX_FILES = 10_000  # names looked at per archive: a pilot that wrote millions of files does not stall the sweeper


def archive_name(worker_id: int) -> str:
    return f"worker-{int(worker_id)}.tar.gz"


def _names(ap: Path) -> Iterator[tuple[str, os.DirEntry | None]]:
    """Relative names below the access point worth keeping, top level then logs/; (name, None) past MAX_FILES."""
    seen = 0
    for sub in ("", *SUBDIRS):
        try:
            entries = sorted(os.scandir(ap / sub if sub else ap), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) or LEFT_OUT.search(entry.name):
                continue  # outputs/, logs/ (read next), hand-off files
            seen += 1
            name = f"{sub}/{entry.name}" if sub else entry.name
            yield name, entry if seen <= MAX_FILES else None


def _read(ap: Path, name: str, budget: int) -> tuple[bytes, os.stat_result, bool]:
    """(content, its fstat, truncated): at most `budget` bytes, the file's end when it is longer."""
    with pilot_files.open_file(ap, name) as (fd, st):
        start = max(0, st.st_size - budget)
        os.lseek(fd, start, os.SEEK_SET)
        chunks, size = [], 0
        while size < budget:
            chunk = os.read(fd, min(budget - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks), st, start > 0


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o600
    tar.addfile(info, io.BytesIO(data))


def _add_files(tar: tarfile.TarFile, ap: Path, manifest: dict, max_bytes: int) -> None:
    left = max_bytes
    for name, entry in _names(ap):
        if entry is None:
            manifest["skipped"].append({"name": name, "reason": f"more than {MAX_FILES} files"})
            continue
        try:
            data, st, truncated = _read(ap, name, left)
        except pilot_files.Unreadable as exc:
            manifest["skipped"].append({"name": name, "reason": exc.reason})
            continue
        except FileNotFoundError:
            continue  # gone since it was listed
        left -= len(data)
        _add(tar, name, data, st.st_mtime)
        kept = {"name": name, "size": st.st_size, "kept": len(data)}
        manifest["files"].append({**kept, "truncated": True} if truncated else kept)


def _write_tar(out: gzip.GzipFile, ap: Path | None, manifest: dict, max_bytes: int) -> None:
    """The files of `ap` (None: unreadable, the manifest only) as a tar stream, MANIFEST.json last."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if ap is not None:
            _add_files(tar, ap, manifest, max_bytes)
        _add(tar, "MANIFEST.json", json.dumps(manifest, indent=1).encode(), manifest["written"])


def archive_access_point(
    ap: Path | str, dest_dir: Path | str, worker_id: int, max_bytes: int, now: float
) -> Path | None:
    """Write the archive of one access point, dated `now` (the daemon's clock: its mtime is what prune_archives
    compares with keep_history); None when the access point is gone (nothing to keep)."""
    ap, dest_dir = Path(ap), Path(dest_dir)
    manifest: dict = {"worker": worker_id, "access_point": str(ap), "written": now, "files": [], "skipped": []}
    readable = True
    try:
        with pilot_files.open_dir(ap):
            pass
    except FileNotFoundError:
        return None
    except pilot_files.Unreadable as exc:  # the access point itself was replaced by a link: keep only the reason
        manifest["skipped"].append({"name": ".", "reason": exc.reason})
        readable = False
    private_dir(dest_dir)
    final = dest_dir / archive_name(worker_id)
    tmp = dest_dir / f".{final.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                _write_tar(gz, ap if readable else None, manifest, max_bytes)
            raw.flush()
            os.utime(raw.fileno(), (now, now))
            os.fsync(raw.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def find_archive(dest_dir: Path | str | None, worker_id: int) -> Path | None:
    """The archive of a worker if there is one (a regular file: what the monitor serves)."""
    if not dest_dir:
        return None
    path = Path(dest_dir) / archive_name(worker_id)
    try:
        st = path.lstat()
    except OSError:
        return None
    return path if st.st_mode & 0o170000 == 0o100000 else None


def prune_archives(dest_dir: Path | str, cutoff: float, limit: int) -> int:
    """Remove at most `limit` archives written before `cutoff` (their mtime, set from the daemon's clock); returns
    how many went. A missing folder has none."""
    removed = 0
    try:
        entries = os.scandir(dest_dir)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if removed >= limit:
                break
            if not ARCHIVE.match(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    return removed
