"""Observations -> alert states and messages: one message per webhook when an alert starts firing, one when it is
resolved, nothing while it stays as it is (deduplicated across cycles and daemon restarts: the state is a row).

Per (rule, key): not firing and unknown -> an `ok` row (its value kept); firing and not yet firing -> `firing`,
messages; still firing -> value refreshed; firing, now clear (or no longer observed) -> `resolved`, messages; an
`ok` row no longer observed goes. A rule evaluated as None (unreadable this time) changes nothing.

Flap damping, per rule: with `fire_after`, a condition that starts holding is `pending` (no message) and fires only
once it has held that long (the alert's `since` is when it began); one that clears before goes back to `ok`. With
`resolve_after`, a firing alert whose condition clears notes when (clear_since) and resolves only once it has stayed
clear that long; if it holds again before, it simply goes on firing: nothing is sent.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass

from harvester_edge.alerts.messages import alert_body
from harvester_edge.alerts.rules import Evaluated
from harvester_edge.config import SiteConfig
from harvester_edge.store import alerts as rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    rule: str
    key: str
    state: str  # firing | resolved
    summary: str


def _announce(conn: sqlite3.Connection, config: SiteConfig, body: dict, rule: str, key: str, now: float) -> None:
    for hook in config.alerts.webhooks:
        rows.enqueue(conn, hook.name, rule, key, body["state"], body, now)


def apply(conn: sqlite3.Connection, config: SiteConfig, evaluated: Evaluated, now: float) -> list[Change]:
    """Record the observations in one transaction (the caller's); returns the state changes."""
    current = rows.by_key(conn)
    changes: list[Change] = []
    for rule, observations in evaluated.items():
        if observations is None:
            continue
        seen = set()
        settings = getattr(config.alerts.rules, rule)
        for o in observations:
            seen.add(o.key)
            row = current.get((rule, o.key))
            alert = o.row()
            state = row["state"] if row is not None else None
            since = float(row["since"]) if row is not None else now  # a pending alert: when its condition began
            cleared = row["clear_since"] if row is not None and row["clear_since"] is not None else now
            if o.firing and state == rows.FIRING:
                rows.refresh(conn, alert, now)  # holds on (a clearing that did not last is forgotten)
            elif o.firing and state == rows.HOLDING and now - since < settings.fire_after:
                rows.refresh(conn, alert, now)
            elif o.firing and state != rows.HOLDING and settings.fire_after > 0:
                rows.hold(conn, alert, now)
            elif o.firing:
                since = since if state == rows.HOLDING else now
                rows.fire(conn, alert, now, since)
                _announce(conn, config, alert_body(config.site, alert, rows.FIRING, since, now), rule, o.key, now)
                changes.append(Change(rule, o.key, rows.FIRING, o.summary))
            elif state == rows.FIRING:
                if now - float(cleared) < settings.resolve_after:
                    rows.refresh(conn, alert, now, clear_since=cleared)
                    continue
                rows.resolve(conn, rule, o.key, o.value, o.summary, now)
                body = alert_body(config.site, alert, rows.RESOLVED, since, now)
                _announce(conn, config, body, rule, o.key, now)
                changes.append(Change(rule, o.key, rows.RESOLVED, o.summary))
            elif state == rows.HOLDING:
                rows.settle(conn, alert, now)  # cleared before it lasted: nothing was announced, nothing is
            elif row is None:
                rows.observe_ok(conn, alert, now)
            else:
                rows.refresh(conn, alert, now)
        for (r, key), row in current.items():
            if r != rule or key in seen:
                continue
            if row["state"] == rows.FIRING:  # no longer observed at all (a task retried, a queue removed): cleared
                summary = f"{row['summary']} (no longer the case)"
                rows.resolve(conn, rule, key, row["value"], summary, now)
                alert = {**dict(row), "labels": json.loads(row["labels"])}
                _announce(
                    conn,
                    config,
                    alert_body(config.site, alert, rows.RESOLVED, row["since"], now, summary),
                    rule,
                    key,
                    now,
                )
                changes.append(Change(rule, key, rows.RESOLVED, summary))
            elif row["state"] in (rows.OK, rows.HOLDING):
                rows.delete(conn, rule, key)
    return changes
