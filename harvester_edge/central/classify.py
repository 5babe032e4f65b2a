"""Error classification: (source, code, diag regex) -> class. Class "system" failures do not use up attempts.

Only confirmed rows decide. An unknown (source, code) is recorded as a suggestion for an operator to review
(`harvester-edge errors suggested` / `errors promote ID`), and meanwhile counts against the attempt limit.
"""

from __future__ import annotations

import re
import sqlite3

from harvester_edge.codes import DispatcherError, EventError, PilotError

from .errors import InvalidInput, NotFound
from .store import rules

SYSTEM = "system"
CLASSES = ("system", "payload", "user", "unknown")
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
            return row["class"], row["class"] != SYSTEM
    guess = SYSTEM if (source, code) in _LIKELY_SYSTEM else "payload"
    rules.suggest(conn, source, code, guess, (diag or "")[:500], now)
    return "unclassified", True


def add_rule(
    conn: sqlite3.Connection, source: str, code: int, diag_pattern: str, klass: str, status: str, now: float
) -> int:
    if klass not in CLASSES:
        raise InvalidInput(f"error class {klass!r} is not one of {', '.join(CLASSES)}")
    if status not in ("suggested", "confirmed"):
        raise InvalidInput(f"classification status {status!r} must be 'suggested' or 'confirmed'")
    try:
        re.compile(diag_pattern)
    except re.error as exc:
        raise InvalidInput(f"diag pattern {diag_pattern!r} is not a valid regular expression: {exc}") from exc
    return rules.upsert(conn, source, code, diag_pattern, klass, status, now)


def promote(conn: sqlite3.Connection, rule_id: int, klass: str | None = None) -> dict:
    row = rules.get(conn, rule_id)
    if row is None:
        raise NotFound(f"error classification {rule_id} does not exist: see `harvester-edge errors list`")
    if klass is not None and klass not in CLASSES:
        raise InvalidInput(f"error class {klass!r} is not one of {', '.join(CLASSES)}")
    rules.confirm(conn, rule_id, klass or row["class"])
    updated = rules.get(conn, rule_id)
    assert updated is not None  # read above in this same transaction
    return dict(updated)
