"""Logging set-up: a file logrotate can rotate (WatchedFileHandler reopens it), optionally JSON lines."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

from harvester_edge.filemodes import private_dir, private_file

FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"
# attributes a log call may add with extra={...}: they are the ids a line concerns, kept as fields in JSON output
CONTEXT_KEYS = ("task_id", "panda_id", "worker_id", "batch_id", "queue")


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "thread": record.threadName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(log_dir: Path | None, level: str = "INFO", as_json: bool = False, stderr: bool = True) -> Path | None:
    """Route the package's logs to <log_dir>/harvester-edge.log (and stderr); returns the log file path."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_harvester_edge", False):
            root.removeHandler(handler)
            handler.close()
    formatter: logging.Formatter = JsonFormatter() if as_json else logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = []
    log_file = None
    if log_dir is not None:
        private_dir(log_dir)
        log_file = private_file(log_dir / "harvester-edge.log", create=True)  # 0600 before the handler opens it
        handlers.append(logging.handlers.WatchedFileHandler(log_file))
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._harvester_edge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("apscheduler", "urllib3", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return log_file
