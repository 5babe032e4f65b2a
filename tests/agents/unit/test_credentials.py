"""Credentials (remote service, the PanDA key flow over the fake transport): the harvester's token is renewed when
less than a third of its lifetime is left, with the operator's initial token once the current one lapsed; a 403
renews at once and the call is retried; a failed renewal keeps the token; each active worker gets a pilot token of
its own, mode 0600. Nothing at all in trusted mode."""

from __future__ import annotations

import stat

import jwt

from doubles import Outage, http, panda_job
from harvester_edge.agents.credentials import Credentials
from harvester_edge.central.tokens import worker_client_name

LIFETIME = 900
TOKEN = "creds/get_access_token"


def token(iat: float, lifetime: float, sub: str = "unit") -> str:
    return jwt.encode({"sub": sub, "iat": int(iat), "exp": int(iat + lifetime)}, "s" * 32, algorithm="HS256")


def remote(make_site, tmp_path, current: str | None = None):
    """A site on a remote, token-checking service; its token file holds `current` (minted at the clock's time)."""
    token_file, key_file = tmp_path / "token", tmp_path / "key"
    key_file.write_text("the-key\n")
    site = make_site(
        central={
            "mode": "remote",
            "url": "http://central.test",
            "tokens": {"token_file": str(token_file), "key_file": str(key_file), "access_lifetime": LIFETIME},
        }
    )
    token_file.write_text(current or token(site.clock.now(), LIFETIME))
    return site, token_file


def test_renewed_when_less_than_a_third_of_its_lifetime_is_left(make_site, tmp_path):
    site, token_file = remote(make_site, tmp_path)
    credentials = site.agent(Credentials)
    site.clock.advance(LIFETIME * 2 / 3 - 1)  # a third of the lifetime and a second left
    site.cycle(credentials)
    assert site.transport.calls == []
    site.clock.advance(2)  # a second less than a third left
    fresh = token(site.clock.now(), LIFETIME)
    site.transport.on(TOKEN, {"user_proxy": fresh})
    site.cycle(credentials)
    (call,) = site.transport.calls
    assert call.params == {"client_name": "unit", "token_key": "the-key"}
    assert token_file.read_text() == fresh
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_a_lapsed_token_is_renewed_with_the_initial_token(make_site, tmp_path):
    now = 1_800_000_000.0
    initial = token(now - 3 * 86400, 4 * 86400)  # the operator's long-lived first token, a day left
    site, token_file = remote(make_site, tmp_path, current=initial)
    credentials = site.agent(Credentials)
    first = token(now, LIFETIME)
    site.transport.on(TOKEN, {"user_proxy": first})
    site.cycle(credentials)
    assert token_file.read_text() == first
    site.clock.advance(LIFETIME + 100)  # the daemon was stopped: the current token lapsed
    site.transport.on(TOKEN, {"user_proxy": token(site.clock.now(), LIFETIME)})
    site.cycle(credentials)
    bearers = [c.headers["Authorization"] for c in site.transport.called(TOKEN)]
    assert bearers == [f"Bearer {initial}", f"Bearer {initial}"]


def test_a_failed_renewal_keeps_the_token_and_is_tried_again(make_site, tmp_path):
    site, token_file = remote(make_site, tmp_path)
    before = token_file.read_text()
    credentials = site.agent(Credentials)
    site.clock.advance(LIFETIME - 10)
    site.transport.on(TOKEN, Outage)
    site.cycle(credentials)
    assert token_file.read_text() == before
    site.transport.on(TOKEN, {"user_proxy": token(site.clock.now(), LIFETIME)})
    site.cycle(credentials)
    assert token_file.read_text() != before
    assert credentials.renewals == 1


def test_a_403_renews_at_once_and_the_call_is_retried(make_site, tmp_path):
    site, _ = remote(make_site, tmp_path)
    site.agent(Credentials)  # installs the client's renewer
    fresh = token(site.clock.now(), LIFETIME)
    site.transport.on("pilot/acquire_jobs", http(403, '{"message": "token revoked"}'), {"jobs": [panda_job(1)]})
    site.transport.on(TOKEN, {"user_proxy": fresh})
    jobs = site.ctx.central.acquire_jobs("unit", queue="q")
    assert [j["PandaID"] for j in jobs] == [1]
    assert [c.path for c in site.transport.calls] == ["pilot/acquire_jobs", TOKEN, "pilot/acquire_jobs"]
    assert site.transport.calls[-1].headers["Authorization"] == f"Bearer {fresh}"


def test_each_active_worker_gets_a_pilot_token_of_its_own(make_site, tmp_path):
    site, _ = remote(make_site, tmp_path)
    site.job(1, "running")
    ap = site.worker(1, "running", jobs=(1,), batch_id="1")
    site.worker(2, "finished", jobs=(1,))  # ended: nothing for it
    pilot = token(site.clock.now(), LIFETIME, sub=worker_client_name("unit", 1))
    site.transport.on("harvester/update_workers", [True])
    site.transport.on("creds/get_token_key", {"tokenKey": "pilot-key"})
    site.transport.on(TOKEN, {"user_proxy": pilot})
    credentials = site.agent(Credentials)
    site.cycle(credentials)
    link, key, tok = site.transport.calls
    assert link.body["workers"][0]["pandaid_list"] == [1]  # the jobs it may touch, before it gets a credential
    assert key.params == {"client_name": worker_client_name("unit", 1)}
    assert tok.params == {"client_name": worker_client_name("unit", 1), "token_key": "pilot-key"}
    assert (ap / "token").read_text() == pilot
    assert stat.S_IMODE((ap / "token").stat().st_mode) == 0o600
    site.clock.advance(60)
    site.cycle(credentials)
    assert len(site.transport.calls) == 3  # still fresh: not renewed


def test_trusted_mode_asks_for_no_credentials(site):
    site.job(1, "running")
    site.worker(1, "running", jobs=(1,), batch_id="1")
    site.cycle(site.agent(Credentials))
    assert site.transport.calls == []
    assert site.ctx.central.renewer is None
