"""What a webhook receives: the generic JSON message, or a Slack/Mattermost incoming-webhook `{"text": ...}`.

The generic message (format `json`):
    {"alert": "queue_paused", "state": "firing" | "resolved" | "test", "severity": "warning",
     "labels": {"queue": "q"}, "value": 3.0, "threshold": 3.0, "since": "2026-11-29T01:02:03Z",
     "at": "2026-11-29T01:02:18Z", "site": "mysite", "summary": "queue q paused: ..."}
`since`: when the alert started firing; `at`: when this message was made (a resolved message: when it cleared).
"""

from __future__ import annotations

import time
from typing import Any

ICONS = {"firing": ":rotating_light:", "resolved": ":white_check_mark:", "test": ":wave:"}


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def alert_body(
    site: str, row: dict[str, Any], state: str, since: float, at: float, summary: str | None = None
) -> dict[str, Any]:
    """The generic message of an alert row (rule, key, severity, labels, value, threshold, summary)."""
    return {
        "alert": row["rule"],
        "state": state,
        "severity": row["severity"],
        "labels": dict(row["labels"]),
        "value": row["value"],
        "threshold": row["threshold"],
        "since": iso(since),
        "at": iso(at),
        "site": site,
        "summary": summary if summary is not None else row["summary"],
    }


def test_body(site: str, webhook: str, now: float) -> dict[str, Any]:
    return {
        "alert": "test",
        "state": "test",
        "severity": "info",
        "labels": {"webhook": webhook},
        "value": None,
        "threshold": None,
        "since": iso(now),
        "at": iso(now),
        "site": site,
        "summary": f"test message from harvester-edge at site {site} to webhook {webhook}",
    }


def slack_text(body: dict[str, Any]) -> str:
    """One line for a chat channel: icon, STATE, site, rule, summary, then value/threshold and since."""
    state = str(body["state"])
    head = f"{ICONS.get(state, '')} [{state.upper()}] {body['site']}: {body['alert']} ({body['severity']})".strip()
    text = f"{head} - {body['summary']}"
    if body.get("value") is not None:
        text += f" (value {body['value']:g}, threshold {body['threshold']:g})"
    if state == "resolved":
        text += f"; firing since {body['since']}, resolved {body['at']}"
    elif state == "firing":
        text += f"; since {body['since']}"
    return text


def render(fmt: str, body: dict[str, Any]) -> dict[str, Any]:
    """The JSON the webhook gets, for its format."""
    return {"text": slack_text(body)} if fmt == "slack" else body
