"""Tokens: the pilot key flow, every rejection case (403, nothing changed), trusted-mode start refusal."""

from __future__ import annotations

import json
import time

import jwt
import pytest
import requests

from doubles import ListTrace
from harvester_edge.central.client import CentralAuthFailed, CentralClient
from harvester_edge.central.errors import CentralError
from harvester_edge.central.server import EmbeddedCentral, trusted_allowed
from harvester_edge.central.settings import CentralSettings
from harvester_edge.replay.recorder import RecordingTransport
from harvester_edge.seams.http import REDACTED, HttpTransport

from .conftest import db_settings, task_dict


def get(url: str, path: str, token: str | None = None, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url + path, params=params, headers=headers, timeout=10)


def test_pilot_key_flow_and_revocation(token_central):
    url, auth = token_central.url, token_central.authority
    initial, key = auth.pilot_credentials("worker-1", ("pilot",))
    # exchange: a short-lived token signed by the service, with audience and scope
    resp = get(url, "/api/v1/creds/get_access_token", initial, client_name="worker-1", token_key=key)
    short = resp.json()["data"]["user_proxy"]  # the real server's shape
    claims = jwt.decode(short, options={"verify_signature": False})
    assert claims["aud"] == "harvester-edge" and claims["scope"] == "pilot"
    assert claims["exp"] - claims["iat"] == 3600
    assert get(url, "/api/v1/event/get_available_event_range_count", short).json()["success"] is True
    # wrong key: 403
    assert (
        get(url, "/api/v1/creds/get_access_token", initial, client_name="worker-1", token_key="guess").status_code
        == 403
    )
    # another client's name: 403
    assert get(url, "/api/v1/creds/get_access_token", short, client_name="worker-2", token_key=key).status_code == 403
    # revoke the key: every token descending from it is refused, and cannot be renewed
    assert auth.revoke("worker-1") == 1
    assert get(url, "/api/v1/event/get_available_event_range_count", short).status_code == 403
    assert get(url, "/api/v1/creds/get_access_token", initial, client_name="worker-1", token_key=key).status_code == 403
    # at most one new key per interval (only unrevoked keys count)
    auth.new_key("worker-3")
    with pytest.raises(CentralError, match="less than"):
        auth.new_key("worker-3")


def test_rejected_tokens_get_403_and_change_nothing(token_central):
    url, auth, svc = token_central.url, token_central.authority, token_central.service
    task_id = svc.submit_task(task_dict())
    before = svc.show_task(task_id)
    now = int(time.time())
    base = {
        "sub": "x",
        "aud": "harvester-edge",
        "iss": "harvester-edge-central",
        "iat": now,
        "exp": now + 600,
        "scope": "pilot harvester",
    }
    forged = jwt.encode(base, b"not-the-secret-" * 4, algorithm="HS256")
    expired = jwt.encode({**base, "exp": now - 10}, auth.secret, algorithm="HS256")
    audience = jwt.encode({**base, "aud": "someone-else"}, auth.secret, algorithm="HS256")
    no_alg = jwt.encode(base, None, algorithm="none")
    wrong_scope = auth.issue("x", ["admin"])
    body = {"site_name": "S", "n_jobs": 1}
    for token in (None, "garbage", forged, expired, audience, no_alg, wrong_scope):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        v1 = requests.post(url + "/api/v1/pilot/acquire_jobs", json=body, headers=headers, timeout=10)
        assert v1.status_code == 403 and v1.json()["success"] is False, token
        legacy = requests.post(url + "/server/panda/getJob", data={"siteName": "S"}, headers=headers, timeout=10)
        assert legacy.status_code == 403, token
    assert svc.show_task(task_id) == before
    good = auth.issue("x", ["pilot"])
    ok = requests.post(
        url + "/api/v1/pilot/acquire_jobs", json=body, timeout=10, headers={"Authorization": f"Bearer {good}"}
    )
    assert ok.json()["data"]["jobs"][0]["taskID"] == task_id
    # is_alive needs no token; task operations need the admin scope
    assert get(url, "/api/v1/system/is_alive").json() == {"success": True, "message": "", "data": None}
    assert get(url, "/api/v1/task/list", good).status_code == 403
    assert get(url, "/api/v1/task/list", wrong_scope).json()["success"] is True


def test_client_with_token_and_redacting_recorder(token_central):
    auth = token_central.authority
    trace = ListTrace()
    harvester = auth.issue("harvester-1", ["harvester"])
    client = CentralClient(
        RecordingTransport(HttpTransport(token_central.url), trace), token=harvester, harvester_id="harvester-1"
    )
    key = client.get_token_key("harvester-1/worker/9")  # a name in the harvester's own namespace
    initial = client.get_access_token("harvester-1/worker/9", key)
    pilot = CentralClient(
        RecordingTransport(HttpTransport(token_central.url), trace), token=initial, harvester_id="harvester-1"
    )
    fresh = pilot.get_access_token("harvester-1/worker/9", key)  # the pilot renews itself with its key
    claims = jwt.decode(fresh, options={"verify_signature": False})
    assert (claims["sub"], claims["scope"], claims["harvester"], claims["worker"]) == (
        "harvester-1/worker/9",
        "pilot",
        "harvester-1",
        "9",
    )
    client.heartbeat()
    with pytest.raises(CentralAuthFailed):
        pilot.heartbeat()  # a pilot token may not act as a harvester (403: transient for the outbox)
    assert len(trace.records) >= 5
    text = repr(trace.records)
    for secret in (harvester, key, initial, fresh):
        assert secret not in text
    records = trace.records
    assert "headers" not in records[0] and records[0]["body"] == REDACTED  # a trace keeps no request headers
    assert records[1]["params"]["token_key"] == REDACTED


def test_trusted_mode_refused_off_loopback(tmp_path):
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        settings = CentralSettings(db=tmp_path / "c.db", host=host, trusted=True)
        assert trusted_allowed(settings)[0] is False
        with pytest.raises(CentralError, match="trusted mode .* only allowed on loopback"):
            EmbeddedCentral(settings).start()
    assert not (tmp_path / "c.db").exists()  # refused before anything was created
    listed = CentralSettings(db=tmp_path / "c.db", host="10.1.2.3", trusted=True, trusted_networks=["10.0.0.0/8"])
    assert trusted_allowed(listed) == (True, "in trusted network 10.0.0.0/8")
    assert trusted_allowed(CentralSettings(host="127.0.0.1", trusted=True))[0]
    assert trusted_allowed(CentralSettings(unix_socket=tmp_path / "s", trusted=True))[0]
    with pytest.raises(ValueError, match="CIDR"):
        CentralSettings(trusted_networks=["ten-dot"])


def test_settings_parse_durations_and_forbid_unknown_keys():
    s = CentralSettings(heartbeat_timeout="2h", tokens={"access_lifetime": "30m"}, watchdog_interval="90s")
    assert (s.heartbeat_timeout, s.tokens.access_lifetime, s.watchdog_interval) == (7200, 1800, 90)
    with pytest.raises(ValueError, match="extra"):
        CentralSettings(heartbat_timeout="2h")
    with pytest.raises(ValueError, match="url"):
        CentralSettings(mode="remote")


def test_legacy_token_flow(token_central):
    url, auth = token_central.url + "/server/panda", token_central.authority
    initial, key = auth.pilot_credentials("pilot-legacy", ("pilot",))
    headers = {"Authorization": f"Bearer {initial}"}
    # JSON whatever the Accept header (the real server's answer; the pilot parses it as a literal)
    answer = requests.post(
        f"{url}/get_access_token", data={"client_name": "pilot-legacy", "token_key": key}, headers=headers, timeout=10
    ).json()
    assert answer["StatusCode"] == 0
    fresh = answer["userProxy"]
    assert jwt.decode(fresh, options={"verify_signature": False})["sub"] == "pilot-legacy"
    refused = requests.post(
        f"{url}/get_access_token",
        data={"client_name": "pilot-legacy", "token_key": "nope"},
        headers=headers,
        timeout=10,
    )
    assert refused.status_code == 403 and refused.json()["StatusCode"] == 70 and refused.json()["errorDialog"]


def test_pilot_server_means_myself(token_central):
    """pilot3 asks get_access_token?client_name=pilot_server (GET, no Accept): each pilot gets its OWN token."""
    url, auth = token_central.url + "/server/panda", token_central.authority
    harvester = auth.issue("h1", ["harvester"])
    creds = {}
    for worker in ("1", "2"):  # two pilots of one harvester, each with its own credential and key
        name = f"h1/worker/{worker}"
        key = requests.get(
            f"{url}/get_token_key",
            params={"client_name": name},
            headers={"Authorization": f"Bearer {harvester}"},
            timeout=10,
        ).json()["tokenKey"]
        initial = auth.exchange(jwt.decode(harvester, options={"verify_signature": False}), name, key)
        creds[worker] = (initial, key)
    for worker, (token, key) in creds.items():
        resp = requests.get(
            f"{url}/get_access_token",
            params={"client_name": "pilot_server", "token_key": key},
            headers={"Authorization": f"Bearer {token}", "Origin": "edge.pilot"},
            timeout=10,
        )
        assert resp.headers["content-type"].startswith("application/json")
        claims = jwt.decode(resp.json()["userProxy"], options={"verify_signature": False})
        assert (claims["sub"], claims["worker"], claims["scope"]) == (f"h1/worker/{worker}", worker, "pilot")
    # one pilot's key does not work with another pilot's token
    resp = requests.get(
        f"{url}/get_access_token",
        params={"client_name": "pilot_server", "token_key": creds["2"][1]},
        headers={"Authorization": f"Bearer {creds['1'][0]}"},
        timeout=10,
    )
    assert resp.status_code == 403 and resp.json()["StatusCode"] == 70
    with pytest.raises(Exception, match="not a client name"):
        auth.pilot_credentials("pilot_server")


def test_port_in_use_is_a_clear_error_and_releases_the_db(tmp_path, central_db):
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        central = EmbeddedCentral(db_settings(central_db, tmp_path, port=port, trusted=True))
        with pytest.raises(CentralError, match=f"cannot listen on 127.0.0.1:{port}"):
            central.start()
        assert central.url is None and central.service.db._wconn is None
    finally:
        blocker.close()


# -- issue 11 part 2: kids, key chains that end, who may mint keys for whom, revoke and keys commands -------------
def claims_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def key_row(auth, kid: str) -> dict:
    return auth.key_state(kid)


def test_every_token_has_a_kid_and_tokens_without_one_are_refused(token_central):
    url, auth = token_central.url, token_central.authority
    plain = auth.issue("x", ["pilot"])
    initial, key = auth.pilot_credentials("p", ("pilot",))
    fresh = get(url, "/api/v1/creds/get_access_token", initial, client_name="p", token_key=key).json()["data"][
        "user_proxy"
    ]
    for token in (plain, initial, fresh):
        kid = claims_of(token)["kid"]
        assert key_row(auth, kid)["client_name"] == claims_of(token)["sub"]
    assert claims_of(fresh)["kid"] == claims_of(initial)["kid"]  # the family of the key
    now = int(time.time())
    no_kid = jwt.encode(
        {
            "sub": "x",
            "aud": "harvester-edge",
            "iss": "harvester-edge-central",
            "iat": now,
            "exp": now + 600,
            "scope": "pilot",
        },
        auth.secret,
        algorithm="HS256",
    )
    assert get(url, "/api/v1/event/get_available_event_range_count", no_kid).status_code == 403
    assert get(url, "/api/v1/event/get_available_event_range_count", plain).status_code == 200
    assert auth.revoke("x") == 1  # a token issued without a key still has a kid that revoke reaches
    assert get(url, "/api/v1/event/get_available_event_range_count", plain).status_code == 403


def test_a_pilot_key_chain_ends_with_its_first_key(token_central):
    """A pilot may mint a key for its own name, but the new key expires no later than the key its token came from:
    minting again and again never gets past the first key's expiry."""
    url, auth = token_central.url, token_central.authority
    auth.settings = auth.settings.model_copy(update={"key_min_interval": 0})
    initial, key = auth.pilot_credentials("pilot-a", ("pilot",))
    first = key_row(auth, claims_of(initial)["kid"])
    token = initial
    for _ in range(3):
        key = get(url, "/api/v1/creds/get_token_key", token, client_name="pilot-a").json()["data"]["tokenKey"]
        # exchange with the new key: the token descends from the new key, whose expiry is capped by its parent
        token = get(url, "/api/v1/creds/get_access_token", token, client_name="pilot-a", token_key=key).json()["data"][
            "user_proxy"
        ]
        row = key_row(auth, claims_of(token)["kid"])
        assert row["key_id"] != first["key_id"]
        assert row["expires"] <= first["expires"] and row["scope"] == "pilot"
        assert claims_of(token)["exp"] <= first["expires"]
    # the chain hangs on the first key: revoking the client ends all of it
    auth.revoke("pilot-a")
    assert get(url, "/api/v1/event/get_available_event_range_count", token).status_code == 403


def test_who_may_mint_keys_for_whom(token_central):
    url, auth = token_central.url, token_central.authority
    harvester = auth.issue("h1", ["harvester"])
    pilot = auth.issue("p1", ["pilot"])
    admin = auth.issue("ops", ["admin"])
    # a harvester: its own workers' names only; never another client's name (not even another harvester's workers)
    for name in ("p1", "h2", "h2/worker/1", "h1/worker/", "h1/worker/1/x", "h1-other"):
        resp = get(url, "/api/v1/creds/get_token_key", harvester, client_name=name)
        assert resp.status_code == 403, name
        legacy = requests.post(
            token_central.url + "/server/panda/get_token_key",
            data={"client_name": name},
            headers={"Authorization": f"Bearer {harvester}"},
            timeout=10,
        )
        assert legacy.status_code == 403, name
    assert get(url, "/api/v1/creds/get_token_key", pilot, client_name="h1/worker/1").status_code == 403
    key = get(url, "/api/v1/creds/get_token_key", harvester, client_name="h1/worker/7").json()["data"]["tokenKey"]
    token = get(url, "/api/v1/creds/get_access_token", harvester, client_name="h1/worker/7", token_key=key).json()[
        "data"
    ]["user_proxy"]
    claims = claims_of(token)
    assert (claims["sub"], claims["scope"], claims["harvester"], claims["worker"]) == (
        "h1/worker/7",
        "pilot",
        "h1",
        "7",
    )
    worker_key = key_row(auth, claims["kid"])
    assert worker_key["parent"] == claims_of(harvester)["kid"]
    assert worker_key["expires"] <= key_row(auth, claims_of(harvester)["kid"])["expires"]
    # another harvester cannot get tokens with h1's worker key
    assert (
        get(
            url,
            "/api/v1/creds/get_access_token",
            auth.issue("h2", ["harvester"]),
            client_name="h1/worker/7",
            token_key=key,
        ).status_code
        == 403
    )
    # admin: any name, a pilot key
    admin_key = get(url, "/api/v1/creds/get_token_key", admin, client_name="someone").json()["data"]
    assert admin_key and key_row(auth, claims_of(admin)["kid"])
    # revoking the harvester ends its workers' credentials too
    assert auth.revoke("h1") >= 2
    assert get(url, "/api/v1/event/get_available_event_range_count", token).status_code == 403


def test_old_token_keys_table_is_upgraded_in_place(tmp_path):
    # SQLite only (an old SQLite file); test_operations.py upgrades an old schema on PostgreSQL
    import sqlite3

    from harvester_edge.central.store.database import Database

    path = tmp_path / "central.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE token_keys (client_name TEXT NOT NULL, key_id TEXT PRIMARY KEY, "
        "key_hash TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, "
        "revoked INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute("INSERT INTO token_keys VALUES ('old', 'k0', 'h', 1, 2, 0)")
    conn.commit()
    conn.close()
    db = Database(path).open()
    try:
        cols = {r[1] for r in db.query("PRAGMA table_info(token_keys)")}
        assert {"scope", "parent", "claims"} <= cols
        assert db.query("SELECT client_name, scope FROM token_keys")[0]["client_name"] == "old"
    finally:
        db.close()
    Database(path).open().close()  # opening again: nothing to add, no error


def test_keys_and_revoke_commands(tmp_path, central_db):
    from types import SimpleNamespace

    from click.testing import CliRunner

    from harvester_edge.central.cli import central_group

    o = SimpleNamespace(
        config=SimpleNamespace(
            central=db_settings(central_db, tmp_path, trusted=False), paths=SimpleNamespace(work_dir=tmp_path)
        )
    )
    runner = CliRunner()
    out = runner.invoke(central_group, ["issue-token", "site-a", "--scope", "harvester", "--json"], obj=o)
    assert out.exit_code == 0, out.output
    kid = claims_of(json.loads(out.output)["token"])["kid"]
    rows = json.loads(runner.invoke(central_group, ["keys", "--json"], obj=o).output)
    assert [(r["kid"], r["client"], r["revoked"]) for r in rows] == [(kid, "site-a", False)]
    assert rows[0]["expires"] > rows[0]["created"]
    table = runner.invoke(central_group, ["keys"], obj=o).output
    for column in ("kid", "client", "created", "expires", "revoked"):
        assert column in table
    assert "site-a" in table
    out = runner.invoke(central_group, ["revoke", "site-a"], obj=o)
    assert out.exit_code == 0 and "revoked 1 key" in out.output, out.output
    assert json.loads(runner.invoke(central_group, ["keys", "--json"], obj=o).output)[0]["revoked"] is True
    again = runner.invoke(central_group, ["revoke", "site-a"], obj=o)
    assert again.exit_code != 0 and "no unrevoked key" in again.output
