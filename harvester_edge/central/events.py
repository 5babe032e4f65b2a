"""Event ranges: split, claim, report. Exactly once: attempt-scoped ids, claims in one UPDATE ... RETURNING.

eventRangeID = "{taskID}-{PandaID}-{fileID}-{processID}-{attemptNr}"; every dispatch increments attemptNr, so a
report is applied only by the (job, attempt) that currently holds the range: a late report from a pilot that lost
its lease, a duplicate or a retried request is a no-op.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from typing import Any, NamedTuple

from . import classify, scouts
from .errors import InvalidInput, NotFound
from .states import RANGE_REPORTED, RangeStatus
from .store import ranges
from .store import tasks as task_rows

FILE_ID = 1  # one pseudo input file per task


class RangeId(NamedTuple):  # a NamedTuple: parsed 100 at a time per request, it must be cheap
    task_id: int
    panda_id: int
    file_id: int
    process_id: int
    attempt_nr: int

    def render(self) -> str:
        return f"{self.task_id}-{self.panda_id}-{self.file_id}-{self.process_id}-{self.attempt_nr}"


_RANGE_ID = re.compile(r"([0-9]{1,18})-([0-9]{1,18})-([0-9]{1,18})-([0-9]{1,18})-([0-9]{1,18})")


def parse_range_id(text: Any) -> RangeId:
    match = _RANGE_ID.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInput(f"eventRangeID {text!r:.100} is not 'taskID-PandaID-fileID-processID-attemptNr'")
    return RangeId._make(map(int, match.groups()))


def split_rows(task_id: int, n_events: int, per_range: int) -> Iterable[tuple]:
    """(task_id, process_id, start_event, last_event, status) for ranges covering events 1..n_events."""
    for i, start in enumerate(range(1, n_events + 1, per_range), start=1):
        yield task_id, i, start, min(start + per_range - 1, n_events), int(RangeStatus.READY)


def render_ranges(task: sqlite3.Row | dict, panda_id: int, rows: list) -> list[dict]:
    """Event range dicts from (process_id, start_event, last_event, attempt_nr) rows."""
    prefix, lfn, guid = f"{task['task_id']}-{panda_id}-{FILE_ID}-", f"{task['name']}.events", task["guid"]
    return [
        {
            "eventRangeID": f"{prefix}{pid}-{attempt}",
            "startEvent": start,
            "lastEvent": last,
            "LFN": lfn,
            "GUID": guid,
            "scope": "edge",
        }
        for pid, start, last, attempt in rows
    ]


def claim(conn: sqlite3.Connection, task: sqlite3.Row, panda_id: int, n_ranges: int, now: float) -> list[dict]:
    """Hand out up to n_ranges ready ranges of the task (task-wide: jumbo jobs) to one job."""
    rows = ranges.claim(conn, task["task_id"], panda_id, n_ranges, now, scouts.claim_upto(conn, task))
    rows.sort(key=lambda r: r[0])
    return render_ranges(task, panda_id, rows)


def _fail(
    conn: sqlite3.Connection,
    key: tuple,
    max_attempts: int,
    counted: bool,
    final: RangeStatus,
    code: int | None,
    diag: str | None,
    now: float,
) -> None:
    """Failed: back to ready while attempts remain (class 'system' does not count), else final."""
    fatal = final == RangeStatus.FATAL
    ranges.fail(conn, key, max_attempts, counted, fatal, int(final), int(RangeStatus.READY), code, diag, now)


def apply_reports(conn: sqlite3.Connection, reports: list[dict], now: float) -> tuple[list[str], set[int]]:
    """Apply version-0 reports; per report 'applied' | 'duplicate' | 'stale' | 'ignored'. Unknown ids raise.
    Also returns the tasks whose ranges changed (to settle).

    The hot loop of the service (100 reports per request): plain tuples (task, panda, file, process, attempt)
    and C-level calls; one SELECT for the current holders and one UPDATE for the finished, per task.
    """
    parsed, keys = [], []
    fullmatch = _RANGE_ID.fullmatch
    for rep in reports:
        if type(rep) is not dict:
            raise InvalidInput(f"event range report must be an object, got {rep!r:.80}")
        text = rep.get("eventRangeID")
        match = fullmatch(text) if type(text) is str else None
        if match is None:
            raise InvalidInput(f"eventRangeID {text!r:.100} is not 'taskID-PandaID-fileID-processID-attemptNr'")
        status = rep.get("eventStatus")
        if status != "finished" and (type(status) is not str or status not in RANGE_REPORTED):
            raise InvalidInput(f"eventStatus {status!r:.80} of {text} is not one of {sorted(RANGE_REPORTED)}")
        code = rep.get("errorCode")
        if code is not None:
            digits = str(code).lstrip("-")
            if (
                isinstance(code, bool)
                or not isinstance(code, (int, str))
                or not digits.isdigit()
                or not digits.isascii()
                or len(digits) > 18
            ):
                raise InvalidInput(f"errorCode {code!r:.80} of {text} is not an integer")
            code = int(code)
        task_id, panda_id, file_id, process_id, attempt_nr = map(int, match.groups())
        key = (task_id, process_id)
        keys.append(key)
        parsed.append((key, panda_id, file_id, attempt_nr, status, code, rep, text))
    done = _all_finished_in_one_go(conn, parsed, now) if len(parsed) > 1 else set()
    if done and len(done) == len(parsed):
        scouts.record(conn, [(p[0][0], p[0][1], p[6]) for p in parsed])
        return ["applied"] * len(parsed), {parsed[0][0][0]}
    rows = _current(conn, keys)
    tasks: dict[int, sqlite3.Row] = {}
    results, touched, finished = [], set(), []
    finished_reports: list[tuple[int, int, dict]] = []
    for key, panda_id, file_id, attempt_nr, status, code, rep, text in parsed:
        row = rows.get(key)
        if row is None or file_id != FILE_ID:
            raise NotFound(f"event range {text} does not exist (task {key[0]}, process {key[1]}); nothing was updated")
        if key in done:  # finished by the one-statement attempt, held as reported (PostgreSQL: some of them)
            finished_reports.append((key[0], key[1], rep))
            results.append("applied")
            touched.add(key[0])
            continue
        current, held_attempt, holder = row
        target = RANGE_REPORTED[status]
        if held_attempt != attempt_nr or holder != panda_id:
            results.append("stale")
        elif current != 1 and current != 2:  # not in flight (sent/running)
            results.append("duplicate" if target is not None and current == target else "ignored")
        elif target is None:
            results.append("applied")
        elif target == 3:  # finished
            finished.append(key)
            finished_reports.append((key[0], key[1], rep))
            rows[key] = (3, held_attempt, holder)
            results.append("applied")
            touched.add(key[0])
        else:
            task = tasks.get(key[0]) or task_rows.max_attempts(conn, key[0])
            tasks[key[0]] = task
            diag = str(rep.get("errorDiag") or "")[:500]
            klass, counted = classify.classify(conn, "event", code or 0, diag, now)
            fatal = target == RangeStatus.FATAL or klass == classify.FATAL  # a fatal class is never retried
            final = RangeStatus.FATAL if fatal else RangeStatus.FAILED
            _fail(conn, key, task["max_attempts"], counted, final, code, diag, now)
            rows[key] = tuple(ranges.holder(conn, key))
            results.append("applied")
            touched.add(key[0])
    by_task: dict[int, list[int]] = {}
    for task_id, process_id in finished:
        by_task.setdefault(task_id, []).append(process_id)
    for task_id, pids in by_task.items():
        for i in range(0, len(pids), 500):
            ranges.finish(conn, task_id, pids[i : i + 500], now)
    scouts.record(conn, finished_reports)
    return results, touched


def _all_finished_in_one_go(conn: sqlite3.Connection, parsed: list, now: float) -> set[tuple[int, int]]:
    """The common case in one statement: every report 'finished', one task, each by the current holder.

    Finishes those held as reported (store/ranges.py finish_held: SQLite all or none, in a savepoint; PostgreSQL
    each one held as reported) and returns their keys; the general path decides for the others (a stale or
    duplicate report).
    """
    task_id = parsed[0][0][0]
    expected = {}
    for key, panda_id, file_id, attempt_nr, status, *_ in parsed:
        if status != "finished" or key[0] != task_id or file_id != FILE_ID:
            return set()
        expected[key[1]] = (attempt_nr, panda_id)
    if len(expected) != len(parsed) or len(parsed) > 500:
        return set()
    return {(task_id, pid) for pid in ranges.finish_held(conn, task_id, expected, now)}


def _current(conn: sqlite3.Connection, keys: list[tuple[int, int]]) -> dict[tuple[int, int], tuple]:
    """(status, attempt_nr, panda_id) of the reported (task_id, process_id), one query per task and chunk."""
    by_task: dict[int, set[int]] = {}
    for task_id, process_id in keys:
        by_task.setdefault(task_id, set()).add(process_id)
    out: dict[tuple[int, int], tuple] = {}
    for task_id, pids in by_task.items():
        pids_list = sorted(pids)
        for i in range(0, len(pids_list), 500):
            chunk = pids_list[i : i + 500]
            for process_id, status, attempt_nr, panda_id in ranges.holders(conn, task_id, chunk):
                out[(task_id, process_id)] = (status, attempt_nr, panda_id)
    return out


def flatten_reports(reports: Any, version: int) -> list:
    """Version 1 wraps reports in {"zipFile": {...}, "eventRanges": [...]}; version 0 is the plain list."""
    if not isinstance(reports, list):
        raise InvalidInput(f"eventRanges must be a JSON list, got {type(reports).__name__}")
    if version == 0:
        return reports
    if version != 1:
        raise InvalidInput(f"version must be 0 or 1, got {version!r}")
    flat: list = []
    for group in reports:
        if not isinstance(group, dict) or not isinstance(group.get("eventRanges"), list):
            raise InvalidInput("version 1 reports are objects {'zipFile': {...}, 'eventRanges': [...]}")
        flat.extend(group["eventRanges"])
    return flat


def release_job_ranges(
    conn: sqlite3.Connection,
    task_id: int,
    panda_id: int,
    max_attempts: int,
    counted: bool,
    code: int,
    diag: str,
    now: float,
    fatal: bool = False,
) -> int:
    """A job ended: its in-flight ranges go back to ready (a counted failure each, if the job's failure counts);
    fatal (its failure's class is 'fatal'): they end as fatal, not retried."""
    rows = ranges.in_flight_of_job(conn, task_id, panda_id)
    final = RangeStatus.FATAL if fatal else RangeStatus.FAILED
    for row in rows:
        _fail(conn, (row[0], row[1]), max_attempts, counted, final, code, diag, now)
    return len(rows)
