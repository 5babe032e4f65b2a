"""What the task_failed and credential_expiring rules read when the central service is remote (central.mode
remote): its DB is not ours to read, so they read what this harvester can see through the service's HTTP API and
its own token.

- task_failed: harvester/get_failed_tasks, the failed tasks this harvester had jobs of (not every failed task of
  a service that serves many sites: another site's failures are another operator's to handle).
- credential_expiring: the exp claim of the token the client sends (its token file, read by the client
  size-capped and only when it is a regular file; a symbolic link to one is followed), not verified:
  the service checks the signature, here only the time is read.
A service that does not answer, or answers with an error, raises the client's CentralUnavailable or
CentralRejected: the rules engine then leaves the rule's alerts as they are (rules.evaluate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from harvester_edge.central.client import CentralClient, CentralRejected, TokenUnreadable

FAILED_TASKS_LIMIT = 500  # tasks asked per evaluation (the route answers at most 1000)
CALL_TIMEOUT = 10.0  # seconds: a hanging service holds the alerts agent no longer than this
RENEWAL_SHARE = 6  # default lead: a sixth of the token's lifetime (the credentials agent renews at a third)


@dataclass(frozen=True)
class TokenTimes:
    source: str  # the token file, or "client" (a token the client holds in memory)
    expires: float
    issued: float | None


def token_times(client: CentralClient) -> TokenTimes | None:
    """exp (and iat) of the token the client sends (CentralClient.token_in_use); None when it sends none."""
    source, token = client.token_in_use()
    if not token:
        return None
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        expires = float(claims["exp"])
        issued = float(claims["iat"]) if "iat" in claims else None
    except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
        raise TokenUnreadable(f"the token in use ({source}) has no readable exp claim ({exc})") from None
    return TokenTimes(source, expires, issued)


def lead_seconds(times: TokenTimes, hours: float, lead: float | None) -> float:
    """How long before the token expires the alert fires: `lead` when configured, else a sixth of the token's
    lifetime (a token renewed at a third left and still not renewed halfway to its end), at most `hours`."""
    if lead is not None:
        return lead
    if times.issued is None or times.expires <= times.issued:
        return hours * 3600.0
    return min(hours * 3600.0, (times.expires - times.issued) / RENEWAL_SHARE)


def failed_tasks(client: CentralClient, harvester_id: str) -> tuple[list[dict[str, Any]], bool]:
    """(the failed tasks harvester_id had jobs of, newest first; whether there were more than were answered)."""
    answer = client.failed_tasks(limit=FAILED_TASKS_LIMIT, harvester_id=harvester_id, timeout=CALL_TIMEOUT)
    tasks = answer.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "task_id" in t for t in tasks):
        raise CentralRejected(f"GET harvester/get_failed_tasks: unexpected answer {str(answer)[:200]}")
    return tasks, bool(answer.get("truncated"))
