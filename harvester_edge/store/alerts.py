"""The alerts and alert_messages tables: each alert's state (firing/resolved) and the messages to the webhooks.

An alert is one (rule, key): the rule names the condition, the key what it is about ('' for the site itself, a
queue, an agent, a task, a credential). A state change and the messages announcing it are written in one
transaction, so a message is neither lost nor doubled by a crash, and a restart does not announce again what was
announced already. Messages are kept until delivered (like the outbox), then pruned with the history.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

OK = "ok"  # observed, not firing (its value is kept for the metrics and the monitor)
HOLDING = "pending"  # the condition holds, not yet for the rule's fire_after: no message yet (Prometheus' pending)
FIRING = "firing"
RESOLVED = "resolved"  # fired, then cleared
PENDING, SENT, DROPPED = "pending", "sent", "dropped"


def has_table(conn: sqlite3.Connection) -> bool:
    """An older DB the daemon has not migrated yet (migration 0007) has no alerts table."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alerts'").fetchone() is not None


def all_alerts(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every alert, firing ones first, then the most recent."""
    return conn.execute(
        "SELECT * FROM alerts ORDER BY state = 'firing' DESC, coalesce(resolved_at, since) DESC, rule, key"
    ).fetchall()


def by_key(conn: sqlite3.Connection) -> dict[tuple[str, str], sqlite3.Row]:
    """(rule, key) -> row, of every alert."""
    return {(r["rule"], r["key"]): r for r in conn.execute("SELECT * FROM alerts").fetchall()}


def firing(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """The alerts firing now, oldest first (the dashboard's and `status`'s count)."""
    return conn.execute("SELECT * FROM alerts WHERE state = ? ORDER BY since, rule, key", (FIRING,)).fetchall()


def firing_by_rule(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT rule, count(*) FROM alerts WHERE state = ? GROUP BY rule", (FIRING,)).fetchall())


def last_evaluated(conn: sqlite3.Connection) -> float | None:
    return conn.execute("SELECT max(evaluated_at) FROM alerts").fetchone()[0]


def _row(alert: dict[str, Any], state: str, now: float) -> tuple:
    return (
        alert["rule"],
        alert["key"],
        state,
        alert["severity"],
        json.dumps(alert["labels"], sort_keys=True),
        alert["value"],
        alert["threshold"],
        alert["summary"],
        now,
        now,
    )


def _enter(conn: sqlite3.Connection, alert: dict[str, Any], state: str, since: float, now: float) -> None:
    conn.execute(
        "INSERT INTO alerts (rule, key, state, severity, labels, value, threshold, summary, since, resolved_at,"
        " evaluated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) ON CONFLICT (rule, key) DO UPDATE SET"
        " state = excluded.state, severity = excluded.severity, labels = excluded.labels, value = excluded.value,"
        " threshold = excluded.threshold, summary = excluded.summary, since = excluded.since, resolved_at = NULL,"
        " clear_since = NULL, evaluated_at = excluded.evaluated_at",
        (*_row(alert, state, since)[:-1], now),
    )


def fire(conn: sqlite3.Connection, alert: dict[str, Any], now: float, since: float | None = None) -> None:
    """The alert (rule, key, severity, labels, value, threshold, summary) starts firing now; `since` is when its
    condition began (earlier than now when it was held back as pending)."""
    _enter(conn, alert, FIRING, now if since is None else since, now)


def hold(conn: sqlite3.Connection, alert: dict[str, Any], now: float) -> None:
    """The condition holds from now on, but the rule wants it to last before the alert fires."""
    _enter(conn, alert, HOLDING, now, now)


def settle(conn: sqlite3.Connection, alert: dict[str, Any], now: float) -> None:
    """A pending condition that cleared before it fired: back to ok, nothing was announced."""
    _enter(conn, alert, OK, now, now)


def observe_ok(conn: sqlite3.Connection, alert: dict[str, Any], now: float) -> None:
    """A condition observed for the first time, not firing: its row keeps the value."""
    conn.execute(
        "INSERT INTO alerts (rule, key, state, severity, labels, value, threshold, summary, since, evaluated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        _row(alert, OK, now),
    )


def refresh(conn: sqlite3.Connection, alert: dict[str, Any], now: float, clear_since: float | None = None) -> None:
    """No state change (no message): the latest value, summary and the rule's current settings; `clear_since`: when
    the condition of a firing alert cleared, while the rule's resolve_after has not passed yet."""
    conn.execute(
        "UPDATE alerts SET value = ?, threshold = ?, severity = ?, labels = ?, summary = ?, evaluated_at = ?, "
        "clear_since = ? WHERE rule = ? AND key = ?",
        (
            alert["value"],
            alert["threshold"],
            alert["severity"],
            json.dumps(alert["labels"], sort_keys=True),
            alert["summary"],
            now,
            clear_since,
            alert["rule"],
            alert["key"],
        ),
    )


def delete(conn: sqlite3.Connection, rule: str, key: str) -> None:
    conn.execute("DELETE FROM alerts WHERE rule = ? AND key = ?", (rule, key))


def resolve(conn: sqlite3.Connection, rule: str, key: str, value: float | None, summary: str, now: float) -> None:
    conn.execute(
        "UPDATE alerts SET state = ?, value = ?, summary = ?, resolved_at = ?, evaluated_at = ?, clear_since = NULL "
        "WHERE rule = ? AND key = ?",
        (RESOLVED, value, summary, now, now, rule, key),
    )


def prune_resolved(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM alerts WHERE state = ? AND resolved_at < ?", (RESOLVED, before)).rowcount


# -- messages -----------------------------------------------------------------------------------------------
def enqueue(conn: sqlite3.Connection, webhook: str, rule: str, key: str, state: str, body: dict, now: float) -> int:
    cur = conn.execute(
        "INSERT INTO alert_messages (webhook, rule, key, state, status, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (webhook, rule, key, state, PENDING, json.dumps(body, sort_keys=True), now),
    )
    return int(cur.lastrowid or 0)


def pending(conn: sqlite3.Connection, webhook: str, limit: int) -> list[sqlite3.Row]:
    """The webhook's undelivered messages, oldest first."""
    return conn.execute(
        "SELECT * FROM alert_messages WHERE webhook = ? AND status = 'pending' ORDER BY id LIMIT ?", (webhook, limit)
    ).fetchall()


def sent_since(conn: sqlite3.Connection, webhook: str, since: float) -> int:
    """Messages delivered to the webhook after `since` (its rate limit)."""
    return conn.execute(
        "SELECT count(*) FROM alert_messages WHERE webhook = ? AND status = 'sent' AND sent_at > ?", (webhook, since)
    ).fetchone()[0]


def mark_sent(conn: sqlite3.Connection, message_id: int, now: float) -> None:
    conn.execute(
        "UPDATE alert_messages SET status = ?, attempts = attempts + 1, sent_at = ?, last_error = NULL WHERE id = ?",
        (SENT, now, message_id),
    )


def mark_failed_try(conn: sqlite3.Connection, message_id: int, error: str, next_try_at: float) -> None:
    conn.execute(
        "UPDATE alert_messages SET attempts = attempts + 1, last_error = ?, next_try_at = ? WHERE id = ?",
        (error, next_try_at, message_id),
    )


def drop_older(conn: sqlite3.Connection, webhook: str, created_before: float, reason: str) -> int:
    """Give up on the webhook's messages pending since before `created_before`."""
    return conn.execute(
        "UPDATE alert_messages SET status = ?, last_error = coalesce(last_error, '') || ? "
        "WHERE webhook = ? AND status = 'pending' AND created_at < ?",
        (DROPPED, f" ({reason})", webhook, created_before),
    ).rowcount


def drop_unknown_webhooks(conn: sqlite3.Connection, known: list[str]) -> int:
    """Pending messages of webhooks no longer configured: dropped (nowhere to go)."""
    marks = ",".join("?" * len(known))
    where = f"AND webhook NOT IN ({marks})" if known else ""
    return conn.execute(
        f"UPDATE alert_messages SET status = ?, last_error = 'webhook no longer configured' "
        f"WHERE status = 'pending' {where}",
        (DROPPED, *known),
    ).rowcount


def prune_messages(conn: sqlite3.Connection, before: float) -> int:
    return conn.execute("DELETE FROM alert_messages WHERE status != 'pending' AND created_at < ?", (before,)).rowcount


def message_counts(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(webhook, status, count) rows."""
    return conn.execute("SELECT webhook, status, count(*) FROM alert_messages GROUP BY 1, 2").fetchall()


def recent_messages(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT id, webhook, rule, key, state, status, attempts, last_error, created_at, sent_at "
        "FROM alert_messages ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
