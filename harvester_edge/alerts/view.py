"""The alerts as the operator reads them (`harvester-edge alerts`, the monitor's alerts page): rows from the
bookkeeping DB as the daemon's alerts agent left them, never evaluated again here."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from harvester_edge.alerts.messages import iso
from harvester_edge.store import alerts as alert_rows

COLUMNS = ("rule", "key", "state", "severity", "value", "threshold", "since", "summary")


def alert_list(conn: sqlite3.Connection | None, everything: bool = False) -> list[dict[str, Any]]:
    """Firing alerts first, then resolved ones; with `everything`, also the conditions that never fired (ok)."""
    if conn is None:
        return []
    out = []
    for row in alert_rows.all_alerts(conn):
        if row["state"] == alert_rows.OK and not everything:
            continue
        item = dict(row)
        item["labels"] = json.loads(row["labels"])
        item["since_iso"] = iso(row["since"])
        item["resolved_iso"] = iso(row["resolved_at"])
        out.append(item)
    return out


def deliveries(conn: sqlite3.Connection | None) -> dict[str, dict[str, int]]:
    """webhook -> {status: count} of its messages (pending, sent, dropped)."""
    out: dict[str, dict[str, int]] = {}
    if conn is None:
        return out
    for webhook, status, n in alert_rows.message_counts(conn):
        out.setdefault(webhook, {})[status] = n
    return out
