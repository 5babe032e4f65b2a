"""The central service layer: plain Python over the central SQLite file, called by HTTP endpoints AND the CLI."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import classify, events, jobs, limits, tasks
from .db import Database
from .errors import CentralError, InvalidInput
from .states import JOB_WATCHED, RangeStatus
from .taskspec import TaskSpec, parse_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Op:
    """A validated write: fn(conn, *args) for the DB writer, then post(result) for the answer."""

    fn: Callable[..., Any]
    args: tuple
    post: Callable[[Any], Any] | None = None


def _check_int(name: str, value: Any, low: int = 0, high: int = 2**62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


class CentralService:
    """Tasks, jumbo jobs, event ranges, workers and error classes. Every write is one savepoint (group commit)."""

    def __init__(self, db: Database, default_attempts: int = 3, heartbeat_timeout: float = 7200,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.default_attempts = default_attempts
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock

    @classmethod
    def open(cls, path: Path, settings: Any = None, clock: Callable[[], float] = time.time) -> "CentralService":
        db = Database(path).open()
        if settings is None:
            return cls(db, clock=clock)
        return cls(db, settings.max_attempts, settings.heartbeat_timeout, clock)

    def close(self) -> None:
        self.db.close()

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    # -- tasks ----------------------------------------------------------------------------------------------
    def submit_task(self, spec: TaskSpec | dict, now: float | None = None) -> int:
        spec = spec if isinstance(spec, TaskSpec) else parse_task(spec)
        task_id = self.db.write(tasks.submit, spec, self.default_attempts, self._now(now))
        log.info("task %s (%s) submitted: %d events in ranges of %d, %d jobs", task_id, spec.name, spec.events,
                 spec.events_per_range, spec.jobs)
        return task_id

    def list_tasks(self) -> list[dict]:
        return tasks.list_tasks(self.db.reader())

    def show_task(self, task_id: int) -> dict:
        return tasks.show(self.db.reader(), _check_int("task_id", task_id))

    def kill_task(self, task_id: int, now: float | None = None) -> str:
        return self.db.write(tasks.kill, _check_int("task_id", task_id), self._now(now))

    def retry_task(self, task_id: int, now: float | None = None) -> str:
        return self.db.write(tasks.retry, _check_int("task_id", task_id), self._now(now))

    # -- hot-path writes: each is an Op, run here (sync) or awaited on the HTTP event loop ---------------------
    def run(self, op: Op) -> Any:
        value = self.db.write(op.fn, *op.args)
        return op.post(value) if op.post else value

    async def run_async(self, op: Op) -> Any:
        value = await self.db.write_async(op.fn, *op.args)
        return op.post(value) if op.post else value

    def acquire_jobs_op(self, site: str, n_jobs: int = 1, harvester_id: str | None = None,
                        worker_id: str | None = None, node: str | None = None, now: float | None = None) -> Op:
        _check_int("n_jobs", n_jobs, 1, 10_000)
        return Op(jobs.dispatch, (n_jobs, limits.name("site", site, required=True),
                                  limits.name("harvester_id", harvester_id), limits.name("worker_id", worker_id),
                                  limits.name("node", node), self._now(now)))

    def update_job_op(self, job_id: int, state: str, fields: dict | None = None, now: float | None = None) -> Op:
        return Op(jobs.update, (job_id, state, fields or {}, self._now(now)))

    def update_jobs_bulk_op(self, updates: list[dict], now: float | None = None) -> Op:
        """Each update is independent: one bad entry gets its error and does not undo the others."""
        if not isinstance(updates, list):
            raise InvalidInput(f"job list must be a JSON list, got {type(updates).__name__}")
        return Op(_bulk, (updates, self._now(now)))

    def acquire_event_ranges_op(self, job_id: int, task_id: int | None = None, n_ranges: int = 10,
                                now: float | None = None) -> Op:
        _check_int("n_ranges", n_ranges, 1, 100_000)
        return Op(_acquire_ranges, (job_id, task_id, n_ranges, self._now(now)))

    def update_event_ranges_op(self, reports: Any, version: int = 0, now: float | None = None) -> Op:
        flat = events.flatten_reports(reports, version)
        return Op(_update_ranges, (flat, self._now(now)),
                  lambda results: {"Returns": [r != "stale" for r in results], "Results": results, "Command": None})

    def acquire_jobs(self, site: str, n_jobs: int = 1, harvester_id: str | None = None,
                     worker_id: str | None = None, node: str | None = None, now: float | None = None) -> list[dict]:
        return self.run(self.acquire_jobs_op(site, n_jobs, harvester_id, worker_id, node, now))

    def update_job(self, job_id: int, state: str, fields: dict | None = None, now: float | None = None) -> str:
        """A pilot's update; returns the command for the pilot ('NULL' or 'tobekilled')."""
        return self.run(self.update_job_op(job_id, state, fields, now))

    def update_jobs_bulk(self, updates: list[dict], now: float | None = None) -> list[dict]:
        return self.run(self.update_jobs_bulk_op(updates, now))

    def acquire_event_ranges(self, job_id: int, task_id: int | None = None, n_ranges: int = 10,
                             now: float | None = None) -> list[dict]:
        return self.run(self.acquire_event_ranges_op(job_id, task_id, n_ranges, now))

    def update_event_ranges(self, reports: Any, version: int = 0, now: float | None = None) -> dict:
        """{"Returns": [bool], "Results": ['applied'|'duplicate'|'stale'|'ignored'], "Command": None}."""
        return self.run(self.update_event_ranges_op(reports, version, now))

    def job_status(self, job_ids: list[int]) -> list[dict]:
        out = []
        for jid in job_ids:
            row = self.db.reader().execute("SELECT status, attempt_nr, command FROM jobs WHERE panda_id=?",
                                           (_check_int("job id", jid),)).fetchone()
            out.append({"PandaID": jid, "status": row[0] if row else "notfound",
                        "attemptNr": row[1] if row else 0, "command": (row[2] or "NULL") if row else "NULL"})
        return out

    # -- reads ----------------------------------------------------------------------------------------------
    def available_range_count(self, task_id: int | None = None) -> int:
        sql, args = "SELECT count(*) FROM ranges r JOIN tasks t USING (task_id) WHERE r.status=? " \
                    "AND t.status IN ('defined', 'running')", [int(RangeStatus.READY)]
        if task_id is not None:
            sql, args = sql + " AND r.task_id=?", args + [_check_int("task_id", task_id)]
        return self.db.reader().execute(sql, args).fetchone()[0]

    # -- harvester and workers ------------------------------------------------------------------------------
    def heartbeat(self, harvester_id: str, attrs: dict | None = None, now: float | None = None) -> None:
        name = limits.name("harvester_id", harvester_id, required=True)
        text = limits.attrs("heartbeat data", attrs or {})
        self.db.write(lambda c, n: c.execute(
            "INSERT INTO harvesters (harvester_id, last_heartbeat, attrs) VALUES (?, ?, ?) ON CONFLICT (harvester_id) "
            "DO UPDATE SET last_heartbeat=excluded.last_heartbeat, attrs=excluded.attrs", (name, n, text)),
            self._now(now))

    def update_workers(self, harvester_id: str, workers: list[dict], now: float | None = None) -> list[bool]:
        if not isinstance(workers, list) or not all(isinstance(w, dict) and "workerID" in w for w in workers):
            raise InvalidInput("workers must be a list of objects with a workerID")
        rows = [(limits.name("workerID", w["workerID"], required=True),
                 limits.name("worker status", w.get("status"), max_len=limits.MAX_STATE),
                 limits.name("computingSite", w.get("computingSite")), limits.name("nodeID", w.get("nodeID")),
                 limits.attrs(f"worker {w['workerID']!r:.40}", w)) for w in workers]
        return self.db.write(_upsert_workers, limits.name("harvester_id", harvester_id, required=True), rows,
                             self._now(now))

    def update_worker_pilot_status(self, harvester_id: str, worker_id: str, status: str, site: str | None = None,
                                   node: str | None = None, now: float | None = None) -> None:
        if not isinstance(status, str) or status not in ("started", "finished"):
            raise InvalidInput(f"pilot status must be 'started' or 'finished', got {status!r:.80}")
        row = (limits.name("harvester_id", harvester_id, required=True),
               limits.name("worker_id", worker_id, required=True), status, limits.name("site", site),
               limits.name("node", node))
        self.db.write(lambda c, n: c.execute(
            "INSERT INTO workers (harvester_id, worker_id, pilot_status, site, node, modified) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET pilot_status=excluded.pilot_status, "
            "node=coalesce(excluded.node, node), modified=excluded.modified", (*row, n)), self._now(now))

    # -- watchdog and errors --------------------------------------------------------------------------------
    def run_watchdog(self, now: float | None = None) -> list[int]:
        now = self._now(now)
        lost = self.db.write(jobs.lose_heartbeats, now - self.heartbeat_timeout, now)
        if lost:
            log.warning("watchdog: jobs %s lost their heartbeat (%ds): failed with code 100, ranges released",
                        lost, self.heartbeat_timeout)
        return lost

    def list_errors(self, status: str | None = None) -> list[dict]:
        sql = "SELECT * FROM error_classes" + (" WHERE status=?" if status else "") + " ORDER BY id"
        return [dict(r) for r in self.db.query(sql, (status,) if status else ())]

    def add_error_rule(self, source: str, code: int, diag_pattern: str, klass: str,
                       status: str = "confirmed") -> int:
        return self.db.write(classify.add_rule, source, code, diag_pattern, klass, status, self.clock())

    def promote_error(self, rule_id: int, klass: str | None = None) -> dict:
        return self.db.write(classify.promote, rule_id, klass)


def _bulk(conn, updates: list, now: float) -> list[dict]:
    answers = []
    for i, upd in enumerate(updates):
        conn.execute("SAVEPOINT bulk")
        try:
            if not isinstance(upd, dict):
                raise InvalidInput(f"job list entry {i} must be an object, got {upd!r:.80}")
            command = jobs.update(conn, upd.get("jobId"), upd.get("state"), upd, now)
            conn.execute("RELEASE bulk")
            answers.append({"StatusCode": 0, "command": command})
        except CentralError as exc:  # per-entry answer; the others go on
            conn.execute("ROLLBACK TO bulk")
            conn.execute("RELEASE bulk")
            answers.append({"StatusCode": getattr(exc, "status_code", 30), "ErrorDiag": str(exc)})
    return answers


def _acquire_ranges(conn, job_id: Any, task_id: Any, n_ranges: int, now: float) -> list[dict]:
    job = jobs.get_job(conn, job_id)
    if task_id is not None and task_id != job["task_id"]:
        raise InvalidInput(f"job {job_id} belongs to task {job['task_id']}, not {task_id!r}")
    if job["status"] not in JOB_WATCHED or job["command"] == "tobekilled":
        return []  # a job that ended or must die gets no more work
    task = conn.execute("SELECT * FROM tasks WHERE task_id=?", (job["task_id"],)).fetchone()
    if task["status"] not in jobs.ACTIVE_TASK:
        return []
    conn.execute("UPDATE jobs SET heartbeat=? WHERE panda_id=?", (now, job_id))
    return events.claim(conn, task, job_id, n_ranges, now)


def _update_ranges(conn, reports: list, now: float) -> list[str]:
    results, touched = events.apply_reports(conn, reports, now)
    for task_id in touched:
        jobs.settle_task(conn, task_id, now, top_up=False)  # range reports do not change the jobs alive
    return results


def _upsert_workers(conn, harvester_id: str, rows: list[tuple], now: float) -> list[bool]:
    """rows: (worker_id, status, site, node, attrs JSON), checked by CentralService.update_workers."""
    conn.executemany(
        "INSERT INTO workers (harvester_id, worker_id, status, site, node, attrs, modified) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET status=excluded.status, "
        "site=coalesce(excluded.site, site), node=coalesce(excluded.node, node), attrs=excluded.attrs, "
        "modified=excluded.modified", [(harvester_id, *row, now) for row in rows])
    return [True] * len(rows)
