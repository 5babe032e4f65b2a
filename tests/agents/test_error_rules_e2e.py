"""Error rules on the whole appliance (issue 17): a real failing payload in local MPI workers, its failures
classified by the central service's confirmed rules: 'fatal' is never retried, 'system' is retried without
using up an attempt (max_attempts 1: a counted failure would end the range at once)."""

from __future__ import annotations

import json
import time

import pytest

from .test_local_e2e import LOCAL_QUEUE

pytestmark = pytest.mark.mpi

FATAL, READY, FINISHED = 8, 0, 3


def test_fatal_failures_are_not_retried_and_system_ones_use_no_attempt(make_site, tasks):
    site = make_site(queue=LOCAL_QUEUE)
    # the fail payload reports code 42 "PayloadError: event N fails on purpose ...": the diag pattern tells them apart
    site.cli("errors", "add", "--source", "event", "--code", "42", "--pattern", "event 5 fails", "--class", "fatal")
    site.cli("errors", "add", "--source", "event", "--code", "42", "--pattern", "event 305 fails", "--class", "system")
    task = tasks.numpy(400, attempts=1)
    task["payload"] = {
        "kind": "python",
        "callable": "jumbo.payloads:fail",
        "args": {"fail_events": [5, 305], "code": 42, "then": "jumbo.payloads:simulate", "size": 32, "rounds": 1},
    }
    task_id = site.submit_task(**task)
    site.start()
    deadline = time.monotonic() + 150
    while True:
        with site.central_db() as conn:
            rows = {
                r[0]: r[1:]
                for r in conn.execute(
                    "SELECT start_event, status, attempt_nr, failures FROM ranges WHERE task_id=?", (task_id,)
                )
            }
        others = [v for k, v in rows.items() if k not in (1, 301)]
        if rows[301][1] >= 3 and all(status == FINISHED for status, _, _ in others):
            break
        assert time.monotonic() < deadline, f"{rows}\n{site.log_tail()}"
        time.sleep(1)
    site.cli("task", "kill", str(task_id))  # the system failure would come back for ever
    site.stop()
    assert rows[1] == (FATAL, 1, 1)  # dispatched once, failed, never again though attempts were 1 of 1
    status, attempts, failures = rows[301]
    assert attempts >= 3 and failures == 0  # handed out again and again, no attempt used
    hits = {r["diag_pattern"]: r["hits"] for r in json.loads(site.cli("errors", "list", "--json").stdout)}
    assert hits["event 5 fails"] == 1 and hits["event 305 fails"] >= 2
    history = json.loads(site.cli("errors", "history", "--json").stdout)
    assert [h["action"] for h in history] == ["add", "add"] and all("(cli)" in h["who"] for h in history)
