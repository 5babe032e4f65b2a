"""Error classification: (source, code, diag regex) -> class. Class "system" failures do not use up attempts;
class "fatal" failures are never retried (the failed range, or the failed job's ranges, end as fatal at once).

Only confirmed rows decide. An unknown (source, code) is recorded as a suggestion for an operator to review
(`harvester-edge errors suggested` / `errors promote ID`), and meanwhile counts against the attempt limit.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from harvester_edge.codes import DispatcherError, EventError, PilotError

from .errors import InvalidInput, NotFound
from .store import rules
from .store.conn import Conn

SYSTEM = "system"
FATAL = "fatal"
CLASSES = ("system", "payload", "user", "unknown", "fatal")
STATUSES = ("suggested", "confirmed")
PATTERN_CHARS = 120  # of a diag message a suggested pattern keeps
# A range the pilot never ran (walltime, drain, worker gone) comes back as failed with this code: not the
# range's fault, so a confirmed "system" rule is seeded into every new central DB (an operator may change it).
SEEDED_RULES = [("event", EventError.NOT_PROCESSED, "", SYSTEM)]
# Suggested as "system" on first sight: not the job's fault (README.md "The central service": class `system`).
_LIKELY_SYSTEM = {
    ("jobDispatcher", DispatcherError.LOST_HEARTBEAT),
    ("jobDispatcher", DispatcherError.RECOVERY_FAILED),
    ("jobDispatcher", DispatcherError.NO_REPLY),
    ("pilot", PilotError.STAGEINFAILED),
    ("pilot", PilotError.STAGEOUTFAILED),
    ("pilot", PilotError.STAGEINTIMEOUT),
}


def classify(conn: sqlite3.Connection, source: str, code: int, diag: str, now: float) -> tuple[str, bool]:
    """(class, counts_against_attempts) for one failure; records a suggestion when nothing confirmed matches."""
    for row in rules.confirmed(conn, source, code):
        if not row["diag_pattern"] or re.search(row["diag_pattern"], diag or ""):
            rules.hit(conn, row["id"])
            return row["class"], row["class"] != SYSTEM  # fatal: counted, and the callers end it as fatal
    guess = SYSTEM if (source, code) in _LIKELY_SYSTEM else "payload"
    rules.suggest(conn, source, code, guess, (diag or "")[:500], now)
    return "unclassified", True


def _check_rule(source: str, code: int, diag_pattern: str, klass: str, status: str) -> None:
    if klass not in CLASSES:
        raise InvalidInput(f"error class {klass!r} is not one of {', '.join(CLASSES)}")
    if status not in STATUSES:
        raise InvalidInput(f"classification status {status!r} must be 'suggested' or 'confirmed'")
    if not isinstance(source, str) or not source or len(source) > 64:
        raise InvalidInput(f"error source {source!r:.80} must be a name of 1-64 characters (pilot, exe, event, ...)")
    if isinstance(code, bool) or not isinstance(code, int) or abs(code) > 2**62:
        raise InvalidInput(f"error code {code!r:.80} must be an integer")
    if not isinstance(diag_pattern, str) or len(diag_pattern) > 1000:
        raise InvalidInput("diag pattern must be a regular expression of at most 1000 characters")
    try:
        re.compile(diag_pattern)
    except re.error as exc:
        raise InvalidInput(f"diag pattern {diag_pattern!r} is not a valid regular expression: {exc}") from exc


def _rule(conn: sqlite3.Connection, rule_id: int) -> sqlite3.Row:
    row = rules.get(conn, rule_id)
    if row is None:
        raise NotFound(f"error classification {rule_id} does not exist: see `harvester-edge errors list`")
    return row


def _as_json(row: sqlite3.Row | dict | None) -> str | None:
    if row is None:
        return None
    keys = ("source", "code", "diag_pattern", "class", "status")
    return json.dumps({k: row[k] for k in keys})


def add_rule(
    conn: sqlite3.Connection,
    source: str,
    code: int,
    diag_pattern: str,
    klass: str,
    status: str,
    now: float,
    who: str = "seeded",
) -> int:
    """Add a rule (or change the class/status of the rule with the same source, code and pattern); recorded."""
    _check_rule(source, code, diag_pattern, klass, status)
    before = rules.same_key(conn, source, code, diag_pattern)
    rule_id = rules.upsert(conn, source, code, diag_pattern, klass, status, now)
    rules.record_change(conn, rule_id, "add", who, now, _as_json(before), _as_json(_rule(conn, rule_id)))
    return rule_id


def edit_rule(conn: sqlite3.Connection, rule_id: int, changes: dict[str, Any], who: str, now: float) -> dict:
    """Change some of a rule's fields (source, code, diag_pattern, class, status); the rule after, recorded."""
    old = _rule(conn, rule_id)
    unknown = set(changes) - {"source", "code", "diag_pattern", "class", "status"}
    if unknown:
        raise InvalidInput(f"error rules have no field(s) {sorted(unknown)}: source, code, diag_pattern, class, status")
    new = {k: old[k] for k in ("source", "code", "diag_pattern", "class", "status")}
    new.update({k: v for k, v in changes.items() if v is not None})
    _check_rule(new["source"], new["code"], new["diag_pattern"], new["class"], new["status"])
    clash = rules.same_key(conn, new["source"], new["code"], new["diag_pattern"])
    if clash is not None and clash["id"] != rule_id:
        raise InvalidInput(
            f"rule {clash['id']} already has source {new['source']}, code {new['code']} and this pattern: "
            f"edit or delete that one"
        )
    rules.change(conn, rule_id, new["source"], new["code"], new["diag_pattern"], new["class"], new["status"])
    rules.record_change(conn, rule_id, "edit", who, now, _as_json(old), _as_json(new))
    return dict(_rule(conn, rule_id))


def delete_rule(conn: sqlite3.Connection, rule_id: int, who: str, now: float) -> dict:
    """Remove a rule; the rule as it was, recorded."""
    old = _rule(conn, rule_id)
    rules.delete(conn, rule_id)
    rules.record_change(conn, rule_id, "delete", who, now, _as_json(old), None)
    return dict(old)


def promote(
    conn: sqlite3.Connection, rule_id: int, klass: str | None = None, who: str = "operator", now: float = 0.0
) -> dict:
    row = _rule(conn, rule_id)
    if klass is not None and klass not in CLASSES:
        raise InvalidInput(f"error class {klass!r} is not one of {', '.join(CLASSES)}")
    rules.confirm(conn, rule_id, klass or row["class"])
    updated = _rule(conn, rule_id)
    rules.record_change(conn, rule_id, "promote", who, now, _as_json(row), _as_json(updated))
    return dict(updated)


def pattern_of(diag: str) -> str:
    """A diag pattern matching this message and its siblings: the start of the message, regex-escaped, with
    every number (ids, sizes, times) as [0-9]+."""
    text = " ".join((diag or "").split())[:PATTERN_CHARS]
    if not text:
        return ""
    return "".join(
        "[0-9]+" if part.isdigit() else re.escape(part) for part in re.split(r"([0-9]+)", text) if part != ""
    )


def failure_of_job(job: sqlite3.Row | dict) -> tuple[str, int, str]:
    """(source, code, diag) of a failed job, as end_job classifies it (pilot error first, then the payload's
    exit code, then the dispatcher's)."""
    if job["pilot_error_code"]:
        return "pilot", job["pilot_error_code"], job["pilot_error_diag"] or ""
    if job["exe_error_code"] or job["trans_exit_code"]:
        return "exe", job["exe_error_code"] or job["trans_exit_code"], job["exe_error_diag"] or ""
    if job["dispatcher_error_code"]:
        return "jobDispatcher", job["dispatcher_error_code"], job["dispatcher_error_diag"] or ""
    return "", 0, ""


def suggest_for_job(conn: Conn, job: sqlite3.Row | dict, failed_ranges: list) -> dict[str, Any]:
    """A rule pre-filled from a job: its failure's source, code and a diag pattern (or, for a job that did not
    fail itself, its ranges' most frequent failure), with the class a suggestion would get and the rules of
    that (source, code) already there (confirmed first, then by hits)."""
    source, code, diag = failure_of_job(job)
    if not source and failed_ranges:
        counts: dict[tuple[int, str], int] = {}
        for row in failed_ranges:
            key = (row["error_code"] or 0, row["error_diag"] or "")
            counts[key] = counts.get(key, 0) + 1
        (code, diag), _ = max(counts.items(), key=lambda kv: kv[1])
        source = "event"
    if not source:
        raise InvalidInput(f"job {job['panda_id']} has no error code and no failed ranges: nothing to make a rule of")
    existing = [dict(r) for r in rules.of_code(conn, source, code)]
    matching = [r for r in existing if r["status"] == "suggested"]
    guess = matching[0]["class"] if matching else (SYSTEM if (source, code) in _LIKELY_SYSTEM else "payload")
    return {
        "panda_id": job["panda_id"],
        "source": source,
        "code": code,
        "diag": diag,
        "diag_pattern": pattern_of(diag),
        "class": guess,
        "existing": existing,
    }
