"""Log files uploaded with file_server/upload_jedi_log (stored whole) and file_server/update_jedi_log (appended).

As the PanDA server (pandaserver/api/v1/file_server_api.py, upload_jedi_log / update_jedi_log) the log's name is
the upload's file name cut at its last "/", and an upload replaces a log of the same name. Unlike it:
- the file lands in <central work dir>/jedilog (next to central.db), a folder only this user can enter (0700),
  each log 0600 (filemodes.py), written through O_NOFOLLOW (a planted symbolic link is refused, never followed);
- a name is letters, digits, ".", "_" and "-" only, at most MAX_NAME_LEN characters and not starting with "."
  (no "..", no hidden files, nothing a shell or a URL must quote); anything else is refused, not rewritten;
- a log is at most `cap` bytes (central.max_body, as the upload's body already is); an append past it, or a
  zlib chunk inflating past it, is refused (BodyTooLarge, HTTP 413) and leaves the log as it was.
The monitor lists a job's logs (names holding its PandaID or task id as a whole number) and shows them.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

from harvester_edge.filemodes import FILE_MODE, private_dir

from .bodies import BodyTooLarge
from .errors import InvalidInput, NotFound

FOLDER = "jedilog"
MAX_NAME_LEN = 200
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def folder(db: Path | str) -> Path:
    """Where the logs of the service whose database is `db` live."""
    return Path(db).with_name(FOLDER)


def safe_name(filename: str | None) -> str:
    """The log's name: the upload's file name after its last '/', when it is a safe name (see the module doc)."""
    base = (filename or "").replace("\\", "/").split("/")[-1]
    if not base or len(base) > MAX_NAME_LEN or not _SAFE.fullmatch(base):
        raise InvalidInput(
            f"log file name {filename!r:.120} is not allowed: use letters, digits, '.', '_' and '-' "
            f"(at most {MAX_NAME_LEN} characters, not starting with '.')"
        )
    return base


def _open(path: Path, flags: int) -> int:
    try:
        fd = os.open(path, flags | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise InvalidInput(f"cannot write log {path.name}: {exc.strerror}") from exc
    os.fchmod(fd, FILE_MODE)
    return fd


def store(db: Path | str, filename: str | None, content: bytes, cap: int) -> str:
    """Write (replace) a log; its safe name. The new content is written next to it and renamed over it."""
    name = safe_name(filename)
    if len(content) > cap:
        raise BodyTooLarge(f"log {name} is {len(content)} bytes: more than the limit of {cap} bytes")
    where = private_dir(folder(db))
    tmp = where / f".{name}.{os.getpid()}.part"
    fd = _open(tmp, os.O_CREAT | os.O_TRUNC)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.replace(tmp, where / name)  # rename replaces a link itself, never what it points to
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return name


def append(db: Path | str, filename: str | None, compressed: bytes, cap: int) -> str:
    """Append a zlib-compressed chunk (what Harvester's communicator upload_file sends) to a log; its name."""
    name = safe_name(filename)
    inflater = zlib.decompressobj()
    try:
        chunk = inflater.decompress(compressed, cap + 1)
    except zlib.error as exc:
        raise InvalidInput(f"log chunk for {name} is not zlib data: {exc}") from exc
    if not inflater.eof:
        raise InvalidInput(f"log chunk for {name} is truncated or inflates past {cap} bytes")
    path = private_dir(folder(db)) / name
    size = path.stat().st_size if path.is_file() and not path.is_symlink() else 0
    if size + len(chunk) > cap:
        raise BodyTooLarge(f"log {name} would grow to {size + len(chunk)} bytes: more than the limit of {cap}")
    fd = _open(path, os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "ab") as fh:
        fh.write(chunk)
    return name


def read(db: Path | str, name: str, limit: int) -> tuple[str, int]:
    """(text of the log's first `limit` bytes, its size); NotFound when there is no such log."""
    name = safe_name(name)
    path = folder(db) / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NotFound(f"there is no log {name!r}") from exc
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return fh.read(limit).decode("utf-8", "replace"), size


def for_job(db: Path | str, panda_id: int, task_id: int | None = None) -> list[str]:
    """Names of the logs whose name holds the job's PandaID (or its task id) as a whole number."""
    where = folder(db)
    if not where.is_dir():
        return []
    wanted = {str(panda_id)} | ({str(task_id)} if task_id is not None else set())
    return sorted(
        entry.name
        for entry in os.scandir(where)
        if entry.is_file(follow_symlinks=False)
        and not entry.name.startswith(".")
        and wanted & set(re.findall(r"[0-9]+", entry.name))
    )
