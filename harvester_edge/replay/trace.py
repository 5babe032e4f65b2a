"""The trace format: versioned JSONL, one outside contact per line; gzip is transparent (by magic bytes on read,
by a ``.gz`` suffix on write).

Line 1 is the header::

    {"trace": "harvester-edge", "version": 1, "site": "lab", "started": 1790000000.0,
     "work_dir": "/srv/he", "install_id": "a1b2c3", "config": {...site config, secrets redacted...}}

Every further line is one record with ``kind`` and ``seq`` (its order), ``cycle`` (the agent cycle it belongs to,
the ``seq`` of that cycle's record), ``t`` (the cycle's clock time, virtual in replay) and ``real`` (wall time)::

    {"kind": "cycle", "seq": 7, "agent": "monitor", "t": 1790000005.0, "real": 1790000005.0}
    {"kind": "command", "seq": 8, "cycle": 7, "argv": ["squeue", ...], "stdin": null, "stdout": "...",
     "stderr": "", "returncode": 0, "duration": 0.02, "timed_out": false}
    {"kind": "http", "seq": 9, "cycle": 7, "method": "POST", "path": "/api/v1/pilot/acquire_jobs",
     "params": null, "json": {...}, "status": 200, "body": "...", "duration": 0.004, "error": null}
    {"kind": "file", "seq": 10, "cycle": 7, "op": "pending", "args": ["@WORK@/workers/w000001",
     "event_status"], "result": [[1, "@WORK@/workers/w000001/event_status.1.json"]], "duration": 0.0001}

Paths under the site's work dir are written as ``@WORK@`` and the Python interpreter as ``@PYTHON@``, so a trace
replays in any directory on any machine. Secrets never reach a trace: the HTTP seam redacts before recording.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harvester_edge.errors import HarvesterEdgeError

FORMAT = "harvester-edge"
VERSION = 1
WORK = "@WORK@"
PYTHON = "@PYTHON@"
KINDS = ("cycle", "command", "http", "file")
# what each kind must carry to be served back: its request and its answer
REQUIRED = {
    "cycle": ("agent", "t"),
    "command": ("argv", "returncode", "stdout"),
    "http": ("method", "path"),
    "file": ("op", "args"),
}


class TraceError(HarvesterEdgeError):
    """A trace file cannot be read: truncated, an unknown version, or a record without its answer (line given)."""


def normalize(obj: Any, work_dir: str, python: str = sys.executable) -> Any:
    """Replace the work dir and the interpreter in every string of `obj` by their markers (pure)."""
    if isinstance(obj, str):
        if work_dir and work_dir in obj:
            obj = obj.replace(work_dir, WORK)
        return obj.replace(python, PYTHON) if python and python in obj else obj
    if isinstance(obj, dict):
        return {normalize(k, work_dir, python): normalize(v, work_dir, python) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [normalize(v, work_dir, python) for v in obj]
    if isinstance(obj, Path):
        return normalize(str(obj), work_dir, python)
    return obj


def denormalize(obj: Any, work_dir: str, python: str = sys.executable) -> Any:
    """The inverse of `normalize` for this machine's work dir and interpreter (pure)."""
    if isinstance(obj, str):
        return obj.replace(WORK, work_dir).replace(PYTHON, python) if "@" in obj else obj
    if isinstance(obj, dict):
        return {denormalize(k, work_dir, python): denormalize(v, work_dir, python) for k, v in obj.items()}
    if isinstance(obj, list):
        return [denormalize(v, work_dir, python) for v in obj]
    return obj


def header(site: str, started: float, work_dir: str, install_id: str, config: dict) -> dict:
    # batch tools print local times: a replay in another time zone parses them to other epochs
    return {
        "trace": FORMAT,
        "version": VERSION,
        "site": site,
        "started": started,
        "work_dir": work_dir,
        "install_id": install_id,
        "utc_offset": time.localtime(started).tm_gmtoff,
        "config": config,
    }


def open_text(path: Path, mode: str) -> io.TextIOBase:
    """Open a trace for reading (gzip detected by its magic bytes) or writing (gzip when the name ends in .gz)."""
    path = Path(path)
    if mode == "r":
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=6)
    return open(path, "w", encoding="utf-8", buffering=1)  # line-buffered: a crash loses at most one line


def check_record(rec: Any, where: str) -> dict:
    """A record as read, or TraceError saying which line lacks what."""
    if not isinstance(rec, dict):
        raise TraceError(f"{where}: expected a JSON object per line, got {type(rec).__name__}")
    kind = rec.get("kind")
    if kind not in KINDS:
        raise TraceError(
            f"{where}: unknown record kind {kind!r} (known: {', '.join(KINDS)}); "
            f"was the trace written by a newer harvester-edge?"
        )
    missing = [k for k in REQUIRED[kind] if k not in rec]
    if kind == "http" and "status" not in rec and not rec.get("error"):
        missing.append("status or error")
    if kind == "file" and "result" not in rec and "error" not in rec:
        missing.append("result or error")
    if missing:
        what = {
            "command": lambda: " ".join(map(str, rec.get("argv") or [])),
            "http": lambda: f"{rec.get('method')} {rec.get('path')}",
            "file": lambda: f"{rec.get('op')} {rec.get('args')}",
            "cycle": lambda: str(rec.get("agent")),
        }[kind]()
        raise TraceError(
            f"{where}: {kind} record {what!r} has no recorded answer (missing {', '.join(missing)}); "
            f"the trace is damaged: record the run again"
        )
    return rec


def read_trace(path: Path) -> tuple[dict, list[dict]]:
    """(header, records) of a trace; every record gets its line number as "_line". Raises TraceError."""
    path = Path(path)
    try:
        fh = open_text(path, "r")
    except OSError as exc:
        raise TraceError(f"cannot open trace {path}: {exc}") from exc
    records: list[dict] = []
    head: dict | None = None
    with fh:
        try:
            for number, line in enumerate(fh, start=1):
                where = f"{path}:{number}"
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    hint = (
                        "the last line is cut short (the recording stopped mid-write?)"
                        if not line.endswith("\n")
                        else "not valid JSON"
                    )
                    raise TraceError(
                        f"{where}: {hint}: {exc.msg} at column {exc.colno}; remove the line or record the run again"
                    ) from exc
                if head is None:
                    head = check_header(obj, where)
                    continue
                rec = check_record(obj, where)
                rec["_line"] = number
                records.append(rec)
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            raise TraceError(
                f"{path}: the compressed trace is truncated or corrupt ({exc}); {len(records)} records were readable"
            ) from exc
    if head is None:
        raise TraceError(f"{path}:1: empty trace (no header line); record the run again")
    return head, records


def check_header(obj: Any, where: str) -> dict:
    if not isinstance(obj, dict) or obj.get("trace") != FORMAT:
        raise TraceError(
            f'{where}: not a harvester-edge trace (the first line must be the header with "trace": "{FORMAT}")'
        )
    if obj.get("version") != VERSION:
        raise TraceError(
            f"{where}: trace format version {obj.get('version')!r} is not supported (this "
            f"harvester-edge reads version {VERSION}); replay it with the release that recorded it"
        )
    for key in ("config", "work_dir", "started"):
        if key not in obj:
            raise TraceError(f"{where}: the header lacks {key!r}; record the run again")
    return obj


def iter_lines(records: list[dict]) -> Iterator[str]:
    for rec in records:
        yield json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}, separators=(",", ":"))
