"""Tokens: the pilot key flow, every rejection case (403, nothing changed), trusted-mode start refusal."""
from __future__ import annotations

import time

import jwt
import pytest
import requests

from harvester_edge.central.client import CentralClient, CentralRejected
from harvester_edge.central.errors import CentralError
from harvester_edge.central.server import EmbeddedCentral, trusted_allowed
from harvester_edge.central.settings import CentralSettings
from harvester_edge.seams.http import REDACTED, HttpTransport

from .conftest import task_dict


def get(url: str, path: str, token: str | None = None, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url + path, params=params, headers=headers, timeout=10)


def test_pilot_key_flow_and_revocation(token_central):
    url, auth = token_central.url, token_central.authority
    initial, key = auth.pilot_credentials("worker-1", ("pilot",))
    # exchange: a short-lived token signed by the service, with audience and scope
    resp = get(url, "/api/v1/creds/get_access_token", initial, client_name="worker-1", token_key=key)
    short = resp.json()["data"]
    claims = jwt.decode(short, options={"verify_signature": False})
    assert claims["aud"] == "harvester-edge" and claims["scope"] == "pilot"
    assert claims["exp"] - claims["iat"] == 3600
    assert get(url, "/api/v1/event/get_available_event_range_count", short).json()["success"] is True
    # wrong key: 403
    assert get(url, "/api/v1/creds/get_access_token", initial, client_name="worker-1",
               token_key="guess").status_code == 403
    # another client's name: 403
    assert get(url, "/api/v1/creds/get_access_token", short, client_name="worker-2",
               token_key=key).status_code == 403
    # revoke the key: every token descending from it is refused, and cannot be renewed
    assert auth.revoke("worker-1") == 1
    assert get(url, "/api/v1/event/get_available_event_range_count", short).status_code == 403
    assert get(url, "/api/v1/creds/get_access_token", initial, client_name="worker-1",
               token_key=key).status_code == 403
    # at most one new key per interval (only unrevoked keys count)
    auth.new_key("worker-3")
    with pytest.raises(CentralError, match="less than"):
        auth.new_key("worker-3")


def test_rejected_tokens_get_403_and_change_nothing(token_central):
    url, auth, svc = token_central.url, token_central.authority, token_central.service
    task_id = svc.submit_task(task_dict())
    before = svc.show_task(task_id)
    now = int(time.time())
    base = {"sub": "x", "aud": "harvester-edge", "iss": "harvester-edge-central", "iat": now, "exp": now + 600,
            "scope": "pilot harvester"}
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
    ok = requests.post(url + "/api/v1/pilot/acquire_jobs", json=body, timeout=10,
                       headers={"Authorization": f"Bearer {good}"})
    assert ok.json()["data"]["jobs"][0]["taskID"] == task_id
    # is_alive needs no token; task operations need the admin scope
    assert get(url, "/api/v1/system/is_alive").json()["data"] == "alive"
    assert get(url, "/api/v1/task/list", good).status_code == 403
    assert get(url, "/api/v1/task/list", wrong_scope).json()["success"] is True


def test_client_with_token_and_redacting_recorder(token_central):
    auth = token_central.authority
    records: list[dict] = []
    harvester = auth.issue("harvester-1", ["harvester"])
    client = CentralClient(HttpTransport(token_central.url, recorder=records.append), token=harvester,
                           harvester_id="harvester-1")
    key = client.get_token_key("pilot-9")
    initial = auth.issue("pilot-9", ["pilot"], lifetime=96 * 3600)
    pilot = CentralClient(HttpTransport(token_central.url, recorder=records.append), token=initial,
                          harvester_id="harvester-1")
    fresh = pilot.get_access_token("pilot-9", key)
    assert jwt.decode(fresh, options={"verify_signature": False})["sub"] == "pilot-9"
    client.heartbeat()
    with pytest.raises(CentralRejected):
        pilot.heartbeat()  # a pilot token may not act as a harvester
    text = repr(records)
    for secret in (harvester, key, initial, fresh):
        assert secret not in text
    assert records[0]["headers"]["Authorization"] == REDACTED and records[0]["body"] == REDACTED
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
    from urllib.parse import parse_qs
    url, auth = token_central.url + "/server/panda", token_central.authority
    initial, key = auth.pilot_credentials("pilot-legacy", ("pilot",))
    headers = {"Authorization": f"Bearer {initial}"}
    answer = parse_qs(requests.post(f"{url}/get_access_token", data={"client_name": "pilot-legacy",
                                                                     "token_key": key},
                                    headers=headers, timeout=10).text)
    assert answer["StatusCode"] == ["0"]
    fresh = answer["userProxy"][0]
    assert jwt.decode(fresh, options={"verify_signature": False})["sub"] == "pilot-legacy"
    assert requests.post(f"{url}/get_access_token", data={"client_name": "pilot-legacy", "token_key": "nope"},
                         headers=headers, timeout=10).status_code == 403


def test_port_in_use_is_a_clear_error_and_releases_the_db(tmp_path):
    import socket
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        central = EmbeddedCentral(CentralSettings(db=tmp_path / "c.db", port=port, trusted=True))
        with pytest.raises(CentralError, match=f"cannot listen on 127.0.0.1:{port}"):
            central.start()
        assert central.url is None and central.service.db._wconn is None
    finally:
        blocker.close()
