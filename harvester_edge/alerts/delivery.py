"""Delivery to the webhooks: through the HTTP seam, bounded by a timeout, rate-limited per webhook, retried with
backoff, never raising into the agent cycle that calls it.

Each webhook's messages go in id order. Before a try: messages older than alerts.give_up_after are dropped (logged);
the webhook's rate limit (max_messages per `per` seconds, counted from the messages it took) leaves the rest pending
for a later cycle; a webhook whose last try failed waits its backoff (5s, 10s, 20s, ... up to alerts.retry_max). A
failure is logged with the webhook's name, never its URL (a Slack URL is a secret).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harvester_edge.alerts.messages import render, test_body
from harvester_edge.config import AlertsConfig, WebhookConfig
from harvester_edge.seams.http import HttpResult, HttpTransport, Transport, TransportError
from harvester_edge.store import Store
from harvester_edge.store import alerts as rows

log = logging.getLogger(__name__)
BACKOFF_FIRST = 5.0
ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")
PER_CYCLE = 20  # messages one webhook gets per cycle at most (a long backlog drains over several cycles)


def webhook_path(hook: WebhookConfig) -> str:
    """The path the seam sees (and a replay trace keeps): the webhook's name, never its URL."""
    return f"webhook/{hook.name}"


class WebhookTransport:
    """The HTTP seam to one webhook: requests to webhook_path(hook) go to the hook's URL; errors name the hook."""

    def __init__(self, hook: WebhookConfig, inner: Transport | None = None) -> None:
        parts = urlsplit(hook.url)
        self.name = hook.name
        self.base_url = f"webhook://{hook.name}"
        self.inner = inner or HttpTransport(f"{parts.scheme}://{parts.netloc}", timeout=float(hook.timeout))
        self.path = urlunsplit(("", "", parts.path or "/", parts.query, ""))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: object = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> HttpResult:
        try:
            return self.inner.request(
                method, self.path, params=params, json=json, headers=headers, timeout=timeout, data=data
            )
        except TransportError as exc:  # its text holds the URL: keep only what went wrong
            cause = exc.__cause__ or exc
            errno = ERRNO.search(str(cause))  # "[Errno 111] Connection refused", "[Errno -2] Name or service ..."
            what = type(cause).__name__ + (f" ({errno.group(0).strip()})" if errno else "")
            raise TransportError(f"{method} webhook {self.name} got no answer: {what}") from None

    def close(self) -> None:
        self.inner.close()


def post(transport: Transport, hook: WebhookConfig, body: dict[str, Any]) -> str | None:
    """One message to one webhook: None when it took it (HTTP 2xx), else what went wrong."""
    headers = {"Content-Type": "application/json", **hook.headers}
    try:
        result = transport.request(
            "POST", webhook_path(hook), json=render(hook.format, body), headers=headers, timeout=float(hook.timeout)
        )
    except TransportError as exc:
        return str(exc)
    except Exception as exc:  # a seam that fails otherwise: still never into the cycle
        return f"{type(exc).__name__}: {exc}"
    if 200 <= result.status < 300:
        return None
    return f"HTTP {result.status}: {result.body[:200].decode('utf-8', 'replace')}"


@dataclass
class Backoff:
    failures: int = 0
    until: float = 0.0


class Deliverer:
    """Drains alert_messages to the configured webhooks. `transport_for(hook)`: the seam to a webhook."""

    def __init__(self, store: Store, transport_for: Callable[[WebhookConfig], Transport] | None = None) -> None:
        self.store = store
        self.transport_for = transport_for or WebhookTransport
        self._transports: dict[tuple[str, str, float], Transport] = {}
        self.backoff: dict[str, Backoff] = {}

    def transport(self, hook: WebhookConfig) -> Transport:
        key = (hook.name, hook.url, float(hook.timeout))
        if key not in self._transports:
            self._transports[key] = self.transport_for(hook)
        return self._transports[key]

    def deliver(self, config: AlertsConfig, now: float) -> int:
        """Send what is due; returns how many messages the webhooks took."""
        with self.store.write() as conn:
            dropped = rows.drop_unknown_webhooks(conn, [h.name for h in config.webhooks])
        if dropped:
            log.warning("alerts: %d undelivered message(s) dropped: their webhook is no longer configured", dropped)
        sent = 0
        for hook in config.webhooks:
            sent += self._deliver_one(config, hook, now)
        return sent

    def _deliver_one(self, config: AlertsConfig, hook: WebhookConfig, now: float) -> int:
        with self.store.write() as conn:
            dropped = rows.drop_older(conn, hook.name, now - config.give_up_after, "given up: undelivered too long")
        if dropped:
            log.error(
                "alerts: webhook %s: %d message(s) given up after %.0fs", hook.name, dropped, config.give_up_after
            )
        back = self.backoff.setdefault(hook.name, Backoff())
        if back.until > now:
            return 0
        conn = self.store.connection()
        room = hook.max_messages - rows.sent_since(conn, hook.name, now - hook.per)
        if room <= 0:
            return 0
        sent = 0
        for message in rows.pending(conn, hook.name, min(room, PER_CYCLE)):
            if message["next_try_at"] is not None and message["next_try_at"] > now:
                break  # its backoff, kept across a restart
            error = post(self.transport(hook), hook, json.loads(message["body"]))
            if error is None:
                with self.store.write() as wconn:
                    rows.mark_sent(wconn, message["id"], now)
                back.failures, back.until = 0, 0.0
                sent += 1
                continue
            back.failures += 1
            wait = min(float(config.retry_max), BACKOFF_FIRST * 2 ** (back.failures - 1))
            back.until = now + wait
            with self.store.write() as wconn:
                rows.mark_failed_try(wconn, message["id"], error, now + wait)
            log.warning(
                "alerts: webhook %s did not take message %d (%s %s): %s; next try in %.0fs",
                hook.name,
                message["id"],
                message["rule"],
                message["state"],
                error,
                wait,
            )
            break  # in order: the rest wait behind it
        return sent


def send_test(hook: WebhookConfig, site: str, now: float, transport: Transport | None = None) -> str | None:
    """`alerts test`: one test message to the webhook; None when it took it, else what went wrong."""
    return post(transport or WebhookTransport(hook), hook, test_body(site, hook.name, now))
