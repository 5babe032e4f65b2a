"""The central service layer: plain Python over the central SQLite file, called by HTTP endpoints AND the CLI."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harvester_edge.codes import StatusCode

from . import brokerage, classify, events, jobs, limits, paylogs, scouts, shortage, tasks
from .errors import CentralError, InvalidInput, NotFound
from .ownership import TRUSTED, Caller, Judge, named_harvester, report_job, required_harvester
from .states import JOB_WATCHED, RangeStatus
from .store import harvesters, monitor, ranges, rules
from .store import jobs as job_rows
from .store import tasks as task_rows
from .store.database import Database, open_database, release, rollback_to, savepoint
from .store.pg import PgDatabase
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

    def __init__(
        self,
        db: Database | PgDatabase,
        default_attempts: int = 3,
        heartbeat_timeout: float = 7200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.default_attempts = default_attempts
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock
        self.pilot_log_dir: Path | None = None  # where PanDA pilots stage out log tarballs (the monitor reads it)
        self.payload_log_max_bytes = 16 * 1024 * 1024  # per job (settings.payload_log_max_mb; central/paylogs.py)

    @classmethod
    def open(cls, path: Path | str, settings: Any = None, clock: Callable[[], float] = time.time) -> CentralService:
        """path: a SQLite file or a postgresql:// URL (then settings.files_dir and settings.pool apply)."""
        db = open_database(path, getattr(settings, "files_dir", None), getattr(settings, "pool", None))
        if settings is None:
            return cls(db, clock=clock)
        svc = cls(db, settings.max_attempts, settings.heartbeat_timeout, clock)
        svc.pilot_log_dir = getattr(settings, "pilot_log_dir", None)
        svc.payload_log_max_bytes = int(float(getattr(settings, "payload_log_max_mb", 16.0)) * 1024 * 1024)
        return svc

    def close(self) -> None:
        self.db.close()

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    # -- tasks ----------------------------------------------------------------------------------------------
    def submit_task(self, spec: TaskSpec | dict, now: float | None = None) -> int:
        spec = spec if isinstance(spec, TaskSpec) else parse_task(spec)
        task_id = self.db.write(tasks.submit, spec, self.default_attempts, self._now(now))
        log.info(
            "task %s (%s) submitted: %d events in ranges of %d, %d jobs",
            task_id,
            spec.name,
            spec.events,
            spec.events_per_range,
            spec.jobs,
        )
        return task_id

    def list_tasks(self) -> list[dict]:
        return tasks.list_tasks(self.db.reader())

    def failed_tasks_of(self, harvester_id: str, since: float, limit: int) -> dict:
        """{tasks: [{task_id, name, diag, modified}] newest first, truncated}: the tasks in state failed (changed
        since `since`) that had a job dispatched to harvester_id; at most `limit` (truncated: there are more)."""
        rows = monitor.failed_tasks_of(self.db.reader(), harvester_id, float(since), int(limit) + 1)
        found = [{"task_id": r[0], "name": r[1], "diag": r[2], "modified": r[3]} for r in rows[:limit]]
        return {"tasks": found, "truncated": len(rows) > limit}

    def work_shortage(self) -> dict:
        """{"shortage", "mode", "reason"}: WORK_SHORTAGE as the harvesters read it (shortage.py)."""
        return shortage.state(self.db.reader())

    def set_work_shortage(self, mode: str) -> dict:
        return self.db.write(shortage.set_mode, mode)

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

    # Every op that changes a job or its ranges takes the Caller (ownership.py) and checks it inside the write.
    def acquire_jobs_op(
        self,
        site: str,
        n_jobs: int = 1,
        harvester_id: str | None = None,
        worker_id: str | None = None,
        node: str | None = None,
        now: float | None = None,
        caller: Caller = TRUSTED,
        resources: brokerage.Resources = brokerage.NO_LIMITS,
    ) -> Op:
        """resources: what a rank of the asking queue offers (brokerage.py): only jobs that fit are handed out."""
        _check_int("n_jobs", n_jobs, 1, 10_000)
        harvester_id, worker_id = named_harvester(
            caller, limits.name("harvester_id", harvester_id), limits.name("worker_id", worker_id)
        )
        return Op(
            jobs.dispatch,
            (
                n_jobs,
                limits.name("site", site, required=True),
                harvester_id,
                worker_id,
                limits.name("node", node),
                self._now(now),
                resources,
            ),
        )

    def update_job_op(
        self, job_id: int, state: str, fields: dict | None = None, now: float | None = None, caller: Caller = TRUSTED
    ) -> Op:
        named_harvester(caller, caller.harvester_id)
        return Op(_update_job, (job_id, state, fields or {}, self._now(now), caller, None, True))

    def update_jobs_bulk_op(self, updates: list[dict], now: float | None = None, caller: Caller = TRUSTED) -> Op:
        """Each update is independent: one bad or foreign entry gets its error and does not undo the others."""
        if not isinstance(updates, list):
            raise InvalidInput(f"job list must be a JSON list, got {type(updates).__name__}")
        named_harvester(caller, caller.harvester_id)
        return Op(_bulk, (updates, self._now(now), caller))

    def acquire_event_ranges_op(
        self,
        job_id: int,
        task_id: int | None = None,
        n_ranges: int = 10,
        now: float | None = None,
        caller: Caller = TRUSTED,
    ) -> Op:
        _check_int("n_ranges", n_ranges, 1, 100_000)
        named_harvester(caller, caller.harvester_id)
        return Op(_acquire_ranges, (job_id, task_id, n_ranges, self._now(now), caller))

    def update_event_ranges_op(
        self, reports: Any, version: int = 0, now: float | None = None, caller: Caller = TRUSTED
    ) -> Op:
        flat = events.flatten_reports(reports, version)
        named_harvester(caller, caller.harvester_id)
        return Op(
            _update_ranges,
            (flat, self._now(now), caller),
            lambda results: {
                "Returns": [r not in ("stale", "refused") for r in results],
                "Results": results,
                "Command": None,
            },
        )

    def acquire_jobs(
        self,
        site: str,
        n_jobs: int = 1,
        harvester_id: str | None = None,
        worker_id: str | None = None,
        node: str | None = None,
        now: float | None = None,
        caller: Caller = TRUSTED,
        resources: brokerage.Resources = brokerage.NO_LIMITS,
    ) -> list[dict]:
        return self.run(self.acquire_jobs_op(site, n_jobs, harvester_id, worker_id, node, now, caller, resources))

    def update_job(
        self, job_id: int, state: str, fields: dict | None = None, now: float | None = None, caller: Caller = TRUSTED
    ) -> str:
        """A pilot's update; returns the command for the pilot ('NULL' or 'tobekilled')."""
        return self.run(self.update_job_op(job_id, state, fields, now, caller))

    def update_jobs_bulk(self, updates: list[dict], now: float | None = None, caller: Caller = TRUSTED) -> list[dict]:
        return self.run(self.update_jobs_bulk_op(updates, now, caller))

    def acquire_event_ranges(
        self,
        job_id: int,
        task_id: int | None = None,
        n_ranges: int = 10,
        now: float | None = None,
        caller: Caller = TRUSTED,
    ) -> list[dict]:
        return self.run(self.acquire_event_ranges_op(job_id, task_id, n_ranges, now, caller))

    def update_event_ranges(
        self, reports: Any, version: int = 0, now: float | None = None, caller: Caller = TRUSTED
    ) -> dict:
        """{"Returns": [bool], "Results": ['applied'|'duplicate'|'stale'|'ignored'|'refused'], "Command": None}."""
        return self.run(self.update_event_ranges_op(reports, version, now, caller))

    def job_status(self, job_ids: list[int]) -> list[dict]:
        out = []
        for jid in job_ids:
            row = job_rows.status_of(self.db.reader(), _check_int("job id", jid))
            out.append(
                {
                    "PandaID": jid,
                    "status": row[0] if row else "notfound",
                    "attemptNr": row[1] if row else 0,
                    "command": (row[2] or "NULL") if row else "NULL",
                }
            )
        return out

    # -- reads ----------------------------------------------------------------------------------------------
    def available_range_count(self, task_id: int | None = None, job_id: int | None = None) -> int:
        """Ready ranges of the task (or all active tasks); for a job (job_id) none while it is held back: its task
        scouts elsewhere or outgrew the job's queue (scouts.held_back): more workers for it would get nothing."""
        if task_id is not None:
            task_id = _check_int("task_id", task_id)
        conn = self.db.reader()
        if job_id is not None:
            job = job_rows.get(conn, _check_int("job_id", job_id))
            if job is not None and scouts.held_back(job, task_rows.of_job(conn, job["task_id"])):
                return 0
        return ranges.count_ready_of_active_tasks(conn, int(RangeStatus.READY), task_id)

    # -- payload logs (central/paylogs.py) ------------------------------------------------------------------
    def upload_payload_logs(
        self, harvester_id: str | None, source: str, records: list[dict], caller: Caller = TRUSTED
    ) -> dict:
        """A harvester's batch of payload log lines (validated by the route's model); stored per job, bounded."""
        name = named_harvester(caller, limits.name("harvester_id", harvester_id))[0] or "trusted"
        source = limits.name("source", source, required=True)
        return self.db.write(paylogs.store, name, source, records, self.payload_log_max_bytes, caller)

    def payload_logs(self, flt: paylogs.LogFilter) -> dict:
        """{lines, last_id, truncated} of the lines the filter selects (central/paylogs.read)."""
        return paylogs.read(self.db.reader(), flt)

    # -- harvester and workers ------------------------------------------------------------------------------
    def heartbeat(
        self, harvester_id: str, attrs: dict | None = None, now: float | None = None, caller: Caller = TRUSTED
    ) -> None:
        name = required_harvester(caller, limits.name("harvester_id", harvester_id, required=True))
        text = limits.attrs("heartbeat data", attrs or {})
        self.db.write(
            lambda c, n: harvesters.heartbeat(c, name, text, n),
            self._now(now),
        )

    def update_workers(
        self, harvester_id: str, workers: list[dict], now: float | None = None, caller: Caller = TRUSTED
    ) -> list[bool]:
        """Harvester's worker specs; "pandaid_list" (the jobs a worker runs) also bounds its pilot (ownership.py)."""
        harvester_id = required_harvester(caller, limits.name("harvester_id", harvester_id, required=True))
        if not isinstance(workers, list) or not all(isinstance(w, dict) and "workerID" in w for w in workers):
            raise InvalidInput("workers must be a list of objects with a workerID")
        for w in workers:
            listed = w.get("pandaid_list")
            if listed is not None and (
                not isinstance(listed, list)
                or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 2**62 for p in listed)
            ):
                raise InvalidInput(
                    f"pandaid_list of worker {w['workerID']!r:.80} must be a list of PandaIDs, got {listed!r:.80}"
                )
        rows = [
            (
                limits.name("workerID", w["workerID"], required=True),
                limits.name("worker status", w.get("status"), max_len=limits.MAX_STATE),
                limits.name("computingSite", w.get("computingSite")),
                limits.name("nodeID", w.get("nodeID")),
                limits.attrs(f"worker {w['workerID']!r:.40}", w),
            )
            for w in workers
        ]
        return self.db.write(_upsert_workers, harvester_id, rows, self._now(now))

    def update_worker_pilot_status(
        self,
        harvester_id: str,
        worker_id: str,
        status: str,
        site: str | None = None,
        node: str | None = None,
        now: float | None = None,
        caller: Caller = TRUSTED,
    ) -> None:
        acting, worker = named_harvester(
            caller,
            limits.name("harvester_id", harvester_id, required=True),
            limits.name("worker_id", worker_id, required=True),
        )
        if acting is None or worker is None:  # empty names: limits.name refused them already
            raise InvalidInput("harvester_id and worker_id are required")
        harvester_id, worker_id = acting, worker
        if not isinstance(status, str) or status not in ("started", "finished"):
            raise InvalidInput(f"pilot status must be 'started' or 'finished', got {status!r:.80}")
        row = (harvester_id, worker_id, status, limits.name("site", site), limits.name("node", node))
        self.db.write(
            lambda c, n: harvesters.pilot_status(c, row, n),
            self._now(now),
        )

    def update_worker_node(self, node: dict, gpu: bool = False, now: float | None = None) -> None:
        """A pilot's description of its node (v1 pilot/update_worker_node[_gpu]), one row per (site, host)."""
        text = limits.attrs("worker node", node)
        self.db.write(
            lambda c, n: harvesters.worker_node(c, node["site"], node["host_name"], gpu, text, n),
            self._now(now),
        )

    # -- watchdog and errors --------------------------------------------------------------------------------
    def run_watchdog(self, now: float | None = None) -> list[int]:
        now = self._now(now)
        lost = self.db.write(jobs.lose_heartbeats, now - self.heartbeat_timeout, now)
        if lost:
            log.warning(
                "watchdog: jobs %s lost their heartbeat (%ds): failed with code 100, ranges released",
                lost,
                self.heartbeat_timeout,
            )
        return lost

    def list_errors(self, status: str | None = None) -> list[dict]:
        return [dict(r) for r in rules.list_rules(self.db.reader(), status)]

    # who: the token subject (API, monitor) or the local user (CLI) that changes a rule; kept in its history
    def add_error_rule(
        self,
        source: str,
        code: int,
        diag_pattern: str,
        klass: str,
        status: str = "confirmed",
        who: str = "operator",
    ) -> int:
        rule_id = self.db.write(classify.add_rule, source, code, diag_pattern, klass, status, self.clock(), who)
        log.info(
            "error rule %s (%s %s %r) set to %s, %s, by %s", rule_id, source, code, diag_pattern, klass, status, who
        )
        return rule_id

    def edit_error_rule(self, rule_id: int, changes: dict[str, Any], who: str = "operator") -> dict:
        row = self.db.write(classify.edit_rule, _check_int("rule_id", rule_id), changes, who, self.clock())
        log.info("error rule %s edited by %s: %s", rule_id, who, changes)
        return row

    def delete_error_rule(self, rule_id: int, who: str = "operator") -> dict:
        row = self.db.write(classify.delete_rule, _check_int("rule_id", rule_id), who, self.clock())
        log.info("error rule %s (%s %s) deleted by %s", rule_id, row["source"], row["code"], who)
        return row

    def promote_error(self, rule_id: int, klass: str | None = None, who: str = "operator") -> dict:
        return self.db.write(classify.promote, rule_id, klass, who, self.clock())

    def suggest_error_rule(self, panda_id: int) -> dict:
        """A rule pre-filled from a job's failure (classify.suggest_for_job); changes nothing."""
        conn = self.db.reader()
        job = job_rows.get(conn, _check_int("panda_id", panda_id))
        if job is None:
            raise NotFound(f"job {panda_id} does not exist")
        return classify.suggest_for_job(conn, job, ranges.failures_of_job(conn, job["task_id"], job["panda_id"]))

    def error_history(self, rule_id: int | None = None, limit: int = 200) -> list[dict]:
        """Who changed which rule when, newest first."""
        rid = None if rule_id is None else _check_int("rule_id", rule_id)
        return [dict(r) for r in rules.changes(self.db.reader(), rid, _check_int("limit", limit, 1, 10_000))]

    # -- priorities and shares (dispatch_order.py) ------------------------------------------------------------
    def set_task_dispatch(
        self,
        task_id: int,
        priority: int | None = None,
        share: float | None = None,
        clear_share: bool = False,
        who: str = "operator",
    ) -> dict:
        out = self.db.write(
            tasks.set_dispatch, _check_int("task_id", task_id), priority, share, clear_share, self.clock()
        )
        log.info("task %s: priority %s, share %s (set by %s)", task_id, out["priority"], out["share"], who)
        return out


def _update_job(
    conn,
    job_id: Any,
    state: Any,
    fields: dict,
    now: float,
    caller: Caller,
    judge: Judge | None = None,
    last: bool = False,
) -> Any:
    """last: the update is the whole write (jobs.update)."""
    if not caller.unchecked:  # look at the owner before anything else: a refused update writes nothing
        (judge or Judge(conn, caller)).check(jobs.get_job(conn, job_id))
    return jobs.update(conn, job_id, state, fields, now, last)


def _bulk(conn, updates: list, now: float, caller: Caller = TRUSTED) -> list[dict]:
    answers, judge = [], Judge(conn, caller)
    for i, upd in enumerate(updates):
        savepoint(conn, "bulk")
        try:
            if not isinstance(upd, dict):
                raise InvalidInput(f"job list entry {i} must be an object, got {upd!r:.80}")
            command = _update_job(conn, upd.get("jobId"), upd.get("state"), upd, now, caller, judge)
            release(conn, "bulk")
            answers.append({"StatusCode": StatusCode.SUCCESS, "command": command})
        except CentralError as exc:  # per-entry answer; the others go on
            rollback_to(conn, "bulk")
            answers.append({"StatusCode": exc.status_code, "ErrorDiag": str(exc)})
    return answers


def _acquire_ranges(conn, job_id: Any, task_id: Any, n_ranges: int, now: float, caller: Caller = TRUSTED) -> list[dict]:
    # PostgreSQL: the job is locked (it cannot end while its ranges are claimed); job and task in one round trip
    job, task = jobs.get_job_and_task(conn, job_id, lock=True)
    Judge(conn, caller).check(job)
    if task_id is not None and task_id != job["task_id"]:
        raise InvalidInput(f"job {job_id} belongs to task {job['task_id']}, not {task_id!r}")
    if job["status"] not in JOB_WATCHED or job["command"] == "tobekilled":
        return []  # a job that ended or must die gets no more work
    if task["status"] not in jobs.ACTIVE_TASK:
        return []
    job_rows.heartbeat(conn, job_id, now)
    if not brokerage.job_fits(job, task):  # the scouts found the task bigger than the job's queue: none for it
        return []
    if jobs.task_kind(task) == "ordinary":  # its one unit of work, claimed at dispatch: handed out once
        rows = ranges.start_sent(conn, task["task_id"], job_id, now)
        return events.render_ranges(task, job_id, rows)
    return events.claim(conn, task, job_id, n_ranges, now)


def _update_ranges(conn, reports: list, now: float, caller: Caller = TRUSTED) -> list[str]:
    if caller.unchecked:
        return _apply_reports(conn, reports, now)
    refused = Judge(conn, caller).refused({pid for pid in map(report_job, reports) if pid is not None})
    if refused:  # reports for ranges of jobs the caller may not change: answered 'refused', never applied
        own = [r for r in reports if report_job(r) not in refused]
        applied = iter(_apply_reports(conn, own, now) if own else [])
        return ["refused" if report_job(r) in refused else next(applied) for r in reports]
    return _apply_reports(conn, reports, now)


def _apply_reports(conn, reports: list, now: float) -> list[str]:
    results, touched = events.apply_reports(conn, reports, now)
    for task_id in touched:
        jobs.settle_task(conn, task_id, now, top_up=False)  # range reports do not change the jobs alive
    return results


def _upsert_workers(conn, harvester_id: str, rows: list[tuple], now: float) -> list[bool]:
    """rows: (worker_id, status, site, node, attrs JSON), checked by CentralService.update_workers."""
    harvesters.upsert_workers(conn, harvester_id, rows, now)
    return [True] * len(rows)
