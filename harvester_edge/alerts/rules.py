"""The alert rules: each turns what the site knows now into observations (rule, key, value, threshold, firing).

Every condition is read where it is already kept, never worked out a second way:
- central_unreachable: the central client's own Reachability (every agent's calls feed it),
- outbox_rejected: the outbox table (messages parked as rejected),
- queue_paused: the submitter's own pause (agents.submitter.submit_failures, PERMANENT_FAILURES_PAUSE),
- credential_expiring: the token file's exp claim (metrics.token_file_expiry) and the central service's token keys
  (central.store.monitor.key_expiry_by_client, as in the metrics),
- agent_stalled: the agents' cycle stats (AgentContext.stats: last cycle that completed),
- task_failed: the central service's tasks (central.store.monitor.failed_tasks),
- against a remote central service (central.mode remote) task_failed and credential_expiring read through its
  HTTP API and the token in use instead (alerts/remote.py),
- worker_failures: the workers table (ended workers of the window, by queue and state).
A rule that cannot be evaluated this time (the central DB unreadable, a remote service not answering, say) answers
None: its alerts keep their state instead of being resolved by a blind spot.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt

from harvester_edge.agents.base import CycleStats
from harvester_edge.agents.submitter import PERMANENT_FAILURES_PAUSE, submit_failures
from harvester_edge.alerts import remote
from harvester_edge.central.client import (
    CentralClient,
    CentralRejected,
    CentralRouteMissing,
    CentralUnavailable,
    Reachability,
)
from harvester_edge.central.store import monitor, pg
from harvester_edge.central.tokens import WORKER_SEP
from harvester_edge.config import SiteConfig
from harvester_edge.durations import format_duration
from harvester_edge.errors import StoreError
from harvester_edge.metrics import ALERT_RULES, token_file_expiry
from harvester_edge.states import WorkerState
from harvester_edge.store import alerts as alert_rows
from harvester_edge.store import outbox
from harvester_edge.store import workers as worker_rows

log = logging.getLogger(__name__)

RULES = ALERT_RULES  # the metrics module holds the list (it exports a gauge per rule without loading the rules)
AGENTS = ("fetcher", "submitter", "monitor", "feeder", "propagator", "sweeper", "credentials")  # watched for stalls


@dataclass(frozen=True)
class Observation:
    rule: str
    key: str  # what it is about: '' (the site), a queue, an agent, a task id, a credential
    labels: dict[str, str]
    value: float | None
    threshold: float
    firing: bool
    summary: str
    severity: str = "warning"

    def row(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "key": self.key,
            "labels": self.labels,
            "value": self.value,
            "threshold": self.threshold,
            "summary": self.summary,
            "severity": self.severity,
        }


@dataclass
class Inputs:
    """What the rules read. `central_db`: the embedded central service's DB (read-only, its SQLite file or its
    PostgreSQL database), None when it is not readable from here (a remote service): the rules that need it are
    then not evaluated. `remote`: the client of a remote central service (central.mode remote), None otherwise."""

    config: SiteConfig
    conn: sqlite3.Connection
    now: float
    started: float  # when this daemon's alerts began: an agent that never completed a cycle counts from here
    reach: Reachability | None = None
    stats: dict[str, CycleStats] = field(default_factory=dict)
    central_db: Any = None
    remote: CentralClient | None = None


Evaluated = dict[str, list[Observation] | None]


def central_unreachable(i: Inputs) -> list[Observation] | None:
    rule = i.config.alerts.rules.central_unreachable
    if i.reach is None or (i.reach.unreachable_since is None and i.reach.last_answer_at is None):
        return None  # no call made yet (a daemon just started): unknown, so a firing alert is not resolved blindly
    seconds = i.reach.seconds_unreachable(i.now)
    firing = i.reach.unreachable_since is not None and seconds >= rule.seconds
    summary = (
        f"central service unreachable for {format_duration(seconds)} ({str(i.reach.last_error)[:200]})"
        if i.reach.unreachable_since is not None
        else "central service answers"
    )
    return [Observation("central_unreachable", "", {}, round(seconds, 1), rule.seconds, firing, summary)]


def outbox_rejected(i: Inputs) -> list[Observation] | None:
    rule = i.config.alerts.rules.outbox_rejected
    n = outbox.rejected_since(i.conn, i.now - rule.window)
    summary = f"{n} outbox message(s) rejected by the central service in the last {format_duration(rule.window)}"
    return [Observation("outbox_rejected", "", {}, float(n), float(rule.count), n >= rule.count, summary)]


def queue_paused(i: Inputs) -> list[Observation] | None:
    out = []
    for queue in i.config.queues:
        n = submit_failures(i.conn, queue.name, i.now)
        firing = n >= PERMANENT_FAILURES_PAUSE
        summary = (
            f"queue {queue.name} paused: {n} refused submissions in the last 10 minutes, no new workers"
            if firing
            else f"queue {queue.name}: {n} refused submissions in the last 10 minutes"
        )
        out.append(
            Observation(
                "queue_paused", queue.name, {"queue": queue.name}, float(n), PERMANENT_FAILURES_PAUSE, firing, summary
            )
        )
    return out


def credential_expiring(i: Inputs) -> list[Observation] | None:
    rule = i.config.alerts.rules.credential_expiring
    if i.config.central.trusted:
        return []
    if i.remote is not None:
        return token_in_use(i)
    expiries: list[tuple[str, dict[str, str], float]] = []
    token_file = i.config.central.tokens.token_file
    if token_file is not None and Path(token_file).is_file():
        try:
            expiries.append((f"token:{token_file}", {"token_file": str(token_file)}, token_file_expiry(token_file)))
        except (OSError, KeyError, TypeError, ValueError, jwt.PyJWTError) as exc:
            log.warning("alerts: token file %s has no readable exp claim (%s)", token_file, exc)
    if i.central_db is not None:
        for client, expires in monitor.key_expiry_by_client(i.central_db):
            if WORKER_SEP not in str(client):  # a pilot's key lives as long as its worker: not the operator's task
                expiries.append((f"key:{client}", {"client": str(client)}, float(expires)))
    out = []
    for key, labels, expires in expiries:
        hours = (expires - i.now) / 3600.0
        what = f"token file {labels['token_file']}" if "token_file" in labels else f"token key of {labels['client']}"
        summary = (
            f"{what} expired {format_duration(-hours * 3600)} ago"
            if hours <= 0
            else f"{what} expires in {format_duration(hours * 3600)}"
        )
        out.append(
            Observation("credential_expiring", key, labels, round(hours, 2), rule.hours, hours < rule.hours, summary)
        )
    return out


def token_in_use(i: Inputs) -> list[Observation] | None:
    """credential_expiring against a remote service: the token the client sends expires within the lead time."""
    rule = i.config.alerts.rules.credential_expiring
    assert i.remote is not None
    try:
        times = remote.token_times(i.remote)
    except remote.TokenUnreadable as exc:
        log.warning("alerts: rule credential_expiring not evaluated this time: %s", exc)
        return None
    if times is None:
        return []  # no token is sent: nothing expires
    lead = remote.lead_seconds(times, rule.hours, rule.token_lead)
    left = times.expires - i.now
    labels = {"token_file": times.source} if times.source != "client" else {"token": "client"}
    what = f"token in use ({times.source})"
    summary = (
        f"{what} expired {format_duration(-left)} ago"
        if left <= 0
        else f"{what} expires in {format_duration(left)} (alert {format_duration(lead)} before)"
    )
    hours = round(left / 3600.0, 2)
    return [
        Observation(
            "credential_expiring", f"token:{times.source}", labels, hours, round(lead / 3600.0, 4), left < lead, summary
        )
    ]


def agent_stalled(i: Inputs) -> list[Observation] | None:
    rule = i.config.alerts.rules.agent_stalled
    out = []
    for name in AGENTS:
        stats = i.stats.get(name)
        if stats is None:
            continue
        interval = float(getattr(i.config.agents, name))
        last = stats.last_ok if stats.last_ok is not None else i.started
        missed = max(0.0, (i.now - last) / interval)
        firing = missed >= rule.intervals
        detail = f"; last error: {stats.last_error}" if stats.last_error else ""
        summary = (
            f"agent {name}: no completed cycle for {format_duration(i.now - last)} ({missed:.1f} intervals){detail}"
        )
        out.append(
            Observation("agent_stalled", name, {"agent": name}, round(missed, 2), rule.intervals, firing, summary)
        )
    return out


def _failed_task(task_id: Any, name: Any, diag: Any) -> Observation:
    summary = f"task {task_id} ({name}) failed" + (f": {diag}" if diag else "")
    return Observation("task_failed", str(task_id), {"task": str(task_id), "name": str(name)}, 1.0, 1.0, True, summary)


def task_failed(i: Inputs) -> list[Observation] | None:
    if i.remote is not None:
        return remote_failed_tasks(i)
    if i.central_db is None:
        return None
    out = []
    for task_id, name, diag, _modified in monitor.failed_tasks(i.central_db):
        out.append(_failed_task(task_id, name, diag))
    return out


def remote_failed_tasks(i: Inputs) -> list[Observation] | None:
    """task_failed against a remote service: the failed tasks this harvester had jobs of (remote.failed_tasks).
    When the answer was cut at its bound, a task alert firing now that is not in it keeps firing (its task is
    older than the answered ones, not known to be retried)."""
    assert i.remote is not None
    tasks, truncated = remote.failed_tasks(i.remote, i.config.site)  # the site name is its harvester_id
    out = [_failed_task(t["task_id"], t.get("name", "?"), t.get("diag", "")) for t in tasks]
    if truncated:
        seen = {o.key for o in out}
        for (rule, key), row in alert_rows.by_key(i.conn).items():
            if rule == "task_failed" and key not in seen and row["state"] in (alert_rows.FIRING, alert_rows.HOLDING):
                labels = json.loads(row["labels"])
                out.append(Observation("task_failed", key, labels, 1.0, 1.0, True, str(row["summary"])))
    return out


def worker_failures(i: Inputs) -> list[Observation] | None:
    rule = i.config.alerts.rules.worker_failures
    ended: dict[str, dict[str, int]] = {}
    for queue, state, n in worker_rows.ended_by_queue(i.conn, i.now - rule.window):
        ended.setdefault(queue, {})[state] = n
    out = []
    for queue in i.config.queues:
        counts = ended.get(queue.name, {})
        total = sum(counts.values())
        failed = counts.get(WorkerState.FAILED.value, 0)
        percent = 100.0 * failed / total if total else 0.0
        firing = total >= rule.min_workers and percent >= rule.percent
        summary = (
            f"queue {queue.name}: {failed} of {total} workers that ended in the last "
            f"{format_duration(rule.window)} failed ({percent:.0f}%)"
        )
        out.append(
            Observation(
                "worker_failures", queue.name, {"queue": queue.name}, round(percent, 1), rule.percent, firing, summary
            )
        )
    return out


EVALUATORS: dict[str, Callable[[Inputs], list[Observation] | None]] = {
    "central_unreachable": central_unreachable,
    "outbox_rejected": outbox_rejected,
    "queue_paused": queue_paused,
    "credential_expiring": credential_expiring,
    "agent_stalled": agent_stalled,
    "task_failed": task_failed,
    "worker_failures": worker_failures,
}


def evaluate(i: Inputs) -> Evaluated:
    """rule -> its observations ([] when disabled: its firing alerts resolve), None when it could not be read."""
    out: Evaluated = {}
    for name in RULES:
        rule = getattr(i.config.alerts.rules, name)
        if not rule.enabled:
            out[name] = []
            continue
        try:
            found = EVALUATORS[name](i)
        except CentralRouteMissing as exc:  # the client said so once (a real PanDA server has no such method)
            log.debug("alerts: rule %s not evaluated: %s", name, exc)
            found = None
        except (sqlite3.Error, pg.psycopg.Error, StoreError, CentralUnavailable, CentralRejected) as exc:
            log.warning("alerts: rule %s not evaluated this time: %s", name, exc)
            found = None
        out[name] = None if found is None else [replace(o, severity=rule.severity) for o in found]
    return out
