"""Private files and folders: databases and secrets 0600, the work dir, access points and logs 0700.

The pilots run as the daemon's own user (batch jobs submitted by it), so nobody else needs to read anything here:
another user of the login node must not read the databases (job specs, token key hashes), the signing secret,
the tokens in the access points or the logs. Modes are set with os.open/os.mkdir and then chmod, so the umask
cannot loosen them. Files and folders made by older versions (0644/0755) are tightened at start, with a log line.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


# folders other programs and users share: never made private, even when a path setting names one of them
SHARED_DIRS = frozenset(
    {
        "/",
        "/tmp",
        "/var",
        "/var/tmp",
        "/var/log",
        "/var/lib",
        "/home",
        "/scratch",
        "/opt",
        "/srv",
        "/usr",
        "/etc",
        str(Path.home()),
    }
)


def _tighten(path: Path, mode: int, st: os.stat_result, what: str) -> bool:
    """chmod `path` to `mode` when group or others have any access; True when it changed."""
    if stat.S_IMODE(st.st_mode) & 0o077 == 0:
        return False
    if stat.S_ISDIR(st.st_mode) and (st.st_mode & stat.S_ISVTX or str(Path(path).resolve()) in SHARED_DIRS):
        log.warning(
            "%s %s is shared (a system folder or sticky): left at mode %o; give harvester-edge a folder "
            "of its own in paths:",
            what,
            path,
            stat.S_IMODE(st.st_mode),
        )
        return False
    if st.st_uid != os.geteuid():
        log.warning(
            "%s %s is mode %o and belongs to uid %d, not to this user: cannot make it %o; fix it by hand",
            what,
            path,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            mode,
        )
        return False
    os.chmod(path, mode)
    log.warning(
        "tightened %s %s from mode %o to %o (made by an older harvester-edge or by hand)",
        what,
        path,
        stat.S_IMODE(st.st_mode),
        mode,
    )
    return True


def private_dir(path: Path, tighten: bool = True) -> Path:
    """Make `path` a folder only this user can enter: missing folders (and missing parents) are created 0700;
    an existing one is tightened to 0700 (unless tighten=False: the caller only needs it to exist)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail on it; say which
            raise FileExistsError(f"{probe} is a dangling symbolic link: cannot create the folder {path}")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile by another process: checked below like any existing folder
        else:
            os.chmod(folder, DIR_MODE)  # the umask may have taken bits away; never adds any here, but be exact
    if path not in missing and not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder (a file or something else is in its place)")
    if tighten and path not in missing:
        _tighten(path, DIR_MODE, os.stat(path), "folder")
    return path


def private_file(path: Path, create: bool = False) -> Path:
    """Make the file `path` readable by this user only: created empty with mode 0600 when `create` and missing,
    tightened to 0600 when it exists with more; a missing file without `create` is left alone."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            return path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
        return path
    if stat.S_ISREG(st.st_mode):
        _tighten(path, FILE_MODE, st, "file")
    return path


def private_database(path: Path) -> Path:
    """A SQLite file and its -wal/-shm/-journal companions 0600. Created before SQLite opens it: SQLite gives the
    companions the database file's own mode, so they are 0600 from their first byte."""
    private_file(path, create=True)
    for suffix in SQLITE_SIDE_FILES:
        private_file(Path(f"{path}{suffix}"))
    return path


def tighten_children(root: Path) -> int:
    """Tighten the folders directly under `root` (access points made by older versions) to 0700, quietly;
    returns how many changed (the caller logs one line for all of them)."""
    changed = 0
    for entry in os.scandir(root):
        if not entry.is_dir(follow_symlinks=False):
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
            os.chmod(entry.path, DIR_MODE)
            changed += 1
    return changed
