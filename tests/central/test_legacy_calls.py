"""Every legacy call the PanDA pilot can make gets the real server's answer shape, never a bare 403/404."""

from __future__ import annotations

from urllib.parse import parse_qs

import requests


def post(central, method: str, json_answer: bool = True, **data):
    headers = {"Accept": "application/json"} if json_answer else {}
    return requests.post(f"{central.url}/server/panda/{method}", data=data, headers=headers, timeout=10)


def test_no_job_answers_carry_error_dialog(trusted_central):
    plain = parse_qs(post(trusted_central, "getJob", json_answer=False, siteName="S").text)
    assert plain["StatusCode"] == ["20"] and "no jobs in PanDA" in plain["errorDialog"][0]
    many = post(trusted_central, "getJob", siteName="S", nJobs="3").json()
    assert many["StatusCode"] == 20 and many["jobs"] == [] and many["errorDialog"]


def test_calls_the_appliance_does_not_provide(trusted_central):
    proxy = post(trusted_central, "getProxy", role="production")
    assert proxy.status_code == 200 and proxy.json()["StatusCode"] == 90 and proxy.json()["errorDialog"]
    keys = post(trusted_central, "getKeyPair", publicKeyName="a", privateKeyName="b")
    assert keys.status_code == 200 and keys.json()["StatusCode"] == 80 and "publicKey" not in keys.json()
    secrets = post(trusted_central, "get_user_secrets", get_json="True", keys="MB_USERNAME")
    assert secrets.status_code == 200 and secrets.json()[0] is False
    debug = post(trusted_central, "setDebugMode", pandaID="1", modeOn="True")
    assert debug.status_code == 200 and debug.text.startswith("ERROR: ")
    # answered in JSON even without Accept, and readable with GET (it changes nothing)
    types = requests.get(f"{trusted_central.url}/server/panda/getResourceTypes", timeout=10)
    assert types.status_code == 200 and types.json()["StatusCode"] == 0
    assert {t["resource_name"] for t in types.json()["ResourceTypes"]} >= {"SCORE", "MCORE"}


def test_credential_calls_are_json_in_trusted_mode_too(trusted_central):
    resp = requests.get(
        f"{trusted_central.url}/server/panda/get_access_token",
        params={"client_name": "pilot_server", "token_key": "k"},
        timeout=10,
    )
    assert resp.headers["content-type"].startswith("application/json") and resp.json()["StatusCode"] != 0


def test_v1_worker_node_updates(trusted_central):
    for call, body in (
        ("pilot/update_worker_node", {"site": "S", "host_name": "n1", "cpu_model": "x", "n_logical_cpus": 4}),
        ("pilot/update_worker_node_gpu", {"site": "S", "host_name": "n1", "vendor": "v", "model": "m", "count": 1}),
    ):
        resp = requests.post(f"{trusted_central.url}/api/v1/{call}", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json()["success"] is True, resp.json()
