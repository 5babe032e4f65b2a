"""The credentials agent against a real central service on loopback (token mode) and a real harvester DB:
renewal timing (embedded in-process issuer and the remote key flow over HTTP), failures logged, each worker's pilot
credential of its own in its access point (mode 0600), and a 403 that never parks an outbox message."""

from __future__ import annotations

import logging
import os
import stat
import time

import jwt
import pytest
import yaml

from harvester_edge.agents.base import AgentContext
from harvester_edge.agents.credentials import Credentials
from harvester_edge.agents.propagator import Propagator
from harvester_edge.config import load_config
from harvester_edge.outbox import enqueue
from harvester_edge.seams.clock import Clock
from harvester_edge.site import daemon_site
from harvester_edge.store import open_store

LIFETIME = 60


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def harvester(tmp_path):
    """A site in embedded token mode: the real service on loopback, its client, the credentials agent."""
    made = []

    def make(central: dict | None = None):
        path = tmp_path / f"site{len(made)}.yaml"
        central = central or {"mode": "embedded", "trusted": False, "tokens": {"access_lifetime": LIFETIME}}
        path.write_text(
            yaml.safe_dump(
                {
                    "site": "s",
                    "queues": [{"name": "q", "batch": "local"}],
                    "paths": {"work_dir": str(tmp_path / f"work{len(made)}")},
                    "central": central,
                }
            )
        )
        config = load_config(path)
        store = open_store(config.db_path)
        with store.write() as conn:
            conn.execute("INSERT INTO queues (name, batch, updated_at) VALUES ('q', 'local', 0)")
        services = daemon_site(config, store, Clock(), "test:1")
        made.append(services)
        return services.ctx, services, Credentials(services.ctx)

    yield make
    for services in made:
        services.stop()


def add_worker(ctx, worker_id: int, state: str):
    ap = ctx.config.access_points / f"w{worker_id:06d}"
    ap.mkdir(parents=True, exist_ok=True)
    with ctx.store.write() as conn:
        conn.execute(
            "INSERT INTO workers (id, queue, state, job_name, access_point, nodes, ranks_per_node, walltime,"
            " created_at, updated_at) VALUES (?, 'q', ?, ?, ?, 1, 1, 60, 0, 0)",
            (worker_id, state, f"w{worker_id}", str(ap)),
        )
    return ap


def test_embedded_token_is_renewed_when_a_third_of_its_lifetime_is_left(harvester):
    ctx, services, agent = harvester()
    authority = services.central.authority
    first = ctx.central.current_token()
    c = claims(first)
    assert c["sub"] == "s" and c["scope"] == "harvester" and c["kid"]  # the daemon's token has a kid
    assert authority.key_state(c["kid"])["client_name"] == "s"
    now = time.time()
    agent.run_cycle(now)
    assert ctx.central.current_token() == first and agent.renewals == 0  # fresh: nothing to do
    agent.run_cycle(now + LIFETIME * 0.5)
    assert ctx.central.current_token() == first  # half left: still not due
    agent.run_cycle(now + LIFETIME * 0.7)  # less than a third left: renewed
    second = ctx.central.current_token()
    assert second != first and agent.renewals == 1
    assert claims(second)["kid"] == c["kid"] and authority.verify(second)["sub"] == "s"
    assert ctx.central.is_alive() and ctx.central.available_range_count() == 0  # the new token works over HTTP


def test_a_revoked_daemon_key_is_not_silently_replaced_and_the_failure_is_logged(harvester, caplog):
    ctx, services, agent = harvester()
    services.central.authority.revoke("s")
    with caplog.at_level(logging.ERROR, logger="harvester_edge.agents.credentials"):
        agent.run_cycle(time.time() + LIFETIME)  # due (expired), but the key is revoked
    assert agent.renewals == 0
    assert "renewing the harvester's token failed (already expired)" in caplog.text
    assert "revoked" in caplog.text


def test_remote_key_flow_renews_over_http_and_survives_a_lapsed_token(harvester, tmp_path, caplog):
    _, services, _ = harvester()  # only its service: the remote harvester below talks to it over HTTP
    authority = services.central.authority
    authority.revoke("s")  # the embedded daemon's own key for "s": out of the way (one new key per hour)
    initial, key = authority.pilot_credentials("s", ("harvester",))
    token_file, key_file = tmp_path / "token", tmp_path / "token.key"
    token_file.write_text(initial)
    key_file.write_text(key)
    ctx, _, agent = harvester(
        {
            "mode": "remote",
            "url": services.central.url,
            "trusted": False,
            "tokens": {"token_file": str(token_file), "key_file": str(key_file)},
        }
    )
    now = time.time()
    agent.run_cycle(now + 70 * 3600)  # less than a third of the 96 h initial token left
    renewed = token_file.read_text()
    assert renewed != initial and mode_of(token_file) == 0o600
    assert (tmp_path / "token.initial").read_text() == initial and mode_of(tmp_path / "token.initial") == 0o600
    assert claims(renewed)["sub"] == "s" and claims(renewed)["kid"] == claims(initial)["kid"]
    assert ctx.central.heartbeat(harvester_id="s") is not None
    # the current token lapsed (here: garbage in its place): the kept initial token is the renewal's bearer
    token_file.write_text("lapsed")
    agent.run_cycle(now)
    assert claims(token_file.read_text())["sub"] == "s"
    # a wrong key: the failure is logged with what is left of the token, nothing is overwritten
    key_file.write_text("wrong")
    before = token_file.read_text()
    with caplog.at_level(logging.ERROR, logger="harvester_edge.agents.credentials"):
        agent.run_cycle(now + 70 * 3600)
    assert token_file.read_text() == before
    assert "renewing the harvester's token failed" in caplog.text and "wrong, expired or revoked" in caplog.text


def test_each_worker_gets_its_own_pilot_credential_mode_0600(harvester, tmp_path):
    ctx, services, agent = harvester()
    running, queued, done = add_worker(ctx, 7, "running"), add_worker(ctx, 8, "queued"), add_worker(ctx, 9, "finished")
    # a planted symlink where the token goes is replaced, never written through
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    os.symlink(victim, queued / "token")
    os.symlink(victim, queued / ".token.tmp")
    agent.run_cycle(time.time())
    harvester_token = ctx.central.current_token()
    for ap, wid in ((running, "7"), (queued, "8")):
        path = ap / "token"
        assert not path.is_symlink() and mode_of(path) == 0o600
        token = path.read_text()
        assert token != harvester_token
        c = services.central.authority.verify(token)
        assert (c["sub"], c["scope"], c["harvester"], c["worker"]) == (f"s/worker/{wid}", "pilot", "s", wid)
        assert services.central.authority.key_state(c["kid"])["parent"] == claims(harvester_token)["kid"]
    assert victim.read_text() == "untouched"
    assert not (done / "token").exists()  # a finished worker gets nothing
    # renewed when a third of its lifetime is left, with the same worker key
    first = (running / "token").read_text()
    agent.run_cycle(time.time() + 10)
    assert (running / "token").read_text() == first
    agent.run_cycle(time.time() + LIFETIME * 0.7)
    second = (running / "token").read_text()
    assert second != first and claims(second)["kid"] == claims(first)["kid"]
    assert mode_of(running / "token") == 0o600
    # a restarted daemon (its worker keys were in memory only) mints new keys at once: no hour-long wait
    (running / "token").unlink()
    Credentials(ctx).run_cycle(time.time())
    assert claims((running / "token").read_text())["kid"] != claims(first)["kid"]


def test_auth_failure_is_transient_for_the_outbox(harvester):
    ctx, services, agent = harvester()
    svc = services.central.service
    task_id = svc.submit_task(
        {
            "name": "t",
            "payload": {"kind": "command", "template": "run {first_event}"},
            "events": 5,
            "events_per_range": 5,
            "seconds_per_event": 1,
        }
    )
    job = svc.acquire_jobs("s", harvester_id="s")[0]["PandaID"]
    rng = svc.acquire_event_ranges(job, task_id, 1)[0]
    with ctx.store.write() as conn:
        enqueue(conn, "update_event_ranges", [{"eventRangeID": rng["eventRangeID"], "eventStatus": "finished"}], 0)
        # a report the service refuses for its content (no such range): that one is parked, permanently
        enqueue(conn, "update_event_ranges", [{"eventRangeID": f"{task_id}-9-9-0-0", "eventStatus": "finished"}], 0)
    propagator = Propagator(ctx)
    now = int(time.time())
    stale = jwt.encode(
        {
            "sub": "s",
            "aud": "harvester-edge",
            "iss": "harvester-edge-central",
            "iat": now - 100,
            "exp": now - 10,
            "scope": "harvester",
            "kid": claims(ctx.central.current_token())["kid"],
        },
        services.central.authority.secret,
        algorithm="HS256",
    )
    ctx.central.set_token(stale)  # the token expired (e.g. the daemon was suspended for longer than a lifetime)
    renewer, ctx.central.renewer = ctx.central.renewer, None
    assert propagator.drain_outbox(time.time()) is False  # 403 without a way to renew: kept, not parked
    rows = ctx.store.query("SELECT state, attempts, last_error FROM outbox ORDER BY id")
    assert [r["state"] for r in rows] == ["pending", "pending"]
    assert rows[0]["attempts"] == 1 and "403" in rows[0]["last_error"]
    ctx.central.renewer = renewer  # the credentials agent's renewer: renew at the 403, then the retry goes through
    assert propagator.drain_outbox(time.time()) is True
    assert [r["state"] for r in ctx.store.query("SELECT state FROM outbox ORDER BY id")] == ["sent", "rejected"]
    assert agent.renewals == 1
    assert svc.show_task(task_id)["events_finished"] == 5  # the report reached the service
