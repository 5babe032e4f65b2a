"""Token mode with an embedded service and a 5 s token lifetime: the daemon renews its own token and its pilots'
credentials for 30+ s and finishes a task, with no outbox message parked as rejected (issue 11, part 2)."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import jwt
import pytest

from helpers import FAST_AGENTS

pytestmark = pytest.mark.mpi  # real local MPI workers

LIFETIME = 5  # seconds: access tokens and initial tokens


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_daemon_in_token_mode_renews_its_credentials_and_finishes_a_task(make_site, tasks):
    central = {
        "mode": "embedded",
        "trusted": False,
        "tokens": {"access_lifetime": LIFETIME, "initial_lifetime": LIFETIME},
    }
    site = make_site(
        central=central,
        agents={**FAST_AGENTS, "credentials": "0.5s"},
    )
    # 4 ranks at most (2 workers x 2 ranks) x 1 s per event: 140 events take at least 35 s of payload time
    events = 140
    task_id = site.task_submit(tasks.sleep(events, 1.0, per_range=5))
    started = time.monotonic()
    site.start_run()
    site.wait_log(r"harvester token renewed", timeout=30)

    pilot_tokens: dict[str, set[str]] = {}  # worker dir -> the tokens seen in its access point
    deadline = started + 240
    while site.task_status(task_id) not in ("finished", "failed", "aborted"):
        assert time.monotonic() < deadline, f"task not done after 240 s:\n{site.log_tail()}"
        assert site.popen.poll() is None, f"the daemon exited:\n{site.log_tail()}"
        for path in (site.work / "workers").glob("w*/token"):
            try:
                mode, token = stat.S_IMODE(os.stat(path).st_mode), path.read_text()
            except FileNotFoundError:
                continue
            assert mode == 0o600, (path, oct(mode))
            pilot_tokens.setdefault(path.parent.name, set()).add(token)
        time.sleep(0.5)
    duration = time.monotonic() - started
    task = site.task_show(task_id)
    assert task["status"] == "finished", (task, site.log_tail())
    site.assert_exactly_once(task_id, events)
    assert duration >= 30, f"the run lasted only {duration:.1f}s: not enough token lifetimes"

    with site.harvester_db() as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
        worker_ids = {f"w{r[0]:06d}": str(r[0]) for r in conn.execute("SELECT id FROM workers")}
    log_text = site.log_text()
    renewals = len(re.findall(r"harvester token renewed", log_text))
    print(
        f"5 s tokens: run {duration:.1f}s, {renewals} renewals of the daemon's token, outbox {states}, "
        f"{sum(len(t) for t in pilot_tokens.values())} pilot tokens in {len(pilot_tokens)} access points"
    )
    assert states.get("rejected", 0) == 0, (states, log_text[-3000:])
    assert states.get("sent", 0) > 0
    # a 5 s token lasting 30+ s: renewed about every 3.3 s
    assert renewals >= duration / LIFETIME, (renewals, duration)
    assert "renewing the harvester's token failed" not in log_text

    # each worker's pilot had a pilot-scoped credential of its own, renewed while it ran
    assert pilot_tokens, "no pilot credential was written to an access point"
    for ap, seen in pilot_tokens.items():
        for token in seen:
            c = claims(token)
            assert (c["sub"], c["scope"], c["harvester"], c["worker"]) == (
                f"t/worker/{worker_ids[ap]}",
                "pilot",
                "t",
                worker_ids[ap],
            ), c
            assert c["kid"]
    assert max(len(seen) for seen in pilot_tokens.values()) >= 2, "no pilot credential was ever renewed"
    # ... and the service was told which jobs each of those workers runs before its pilot got a credential, so the
    # credential reaches those jobs alone (central/ownership.py)
    with site.harvester_db() as conn:
        linked = {
            str(w): sorted(p for (p,) in conn.execute("SELECT panda_id FROM job_workers WHERE worker_id=?", (w,)))
            for (w,) in conn.execute("SELECT id FROM workers")
        }
    with site.central_db() as conn:
        reported = {
            w: json.loads(attrs).get("pandaid_list")
            for w, attrs in conn.execute("SELECT worker_id, attrs FROM workers WHERE harvester_id='t'")
        }
    for ap in pilot_tokens:
        assert reported.get(worker_ids[ap]) == linked[worker_ids[ap]] != [], (ap, reported, linked)

    # the daemon's own keys are listed with the token commands, and a 403 never parked anything
    keys = json.loads(site.cli("central", "keys", "--json").stdout)
    assert any(k["client"] == "t" and not k["revoked"] for k in keys)
    assert any(k["client"].startswith("t/worker/") for k in keys)
    assert site.stop_pid(site.popen.pid, timeout=30) < 30
