"""Alerts of a real daemon to a real webhook receiver: the central service unreachable fires one message, later
cycles and a daemon restart send no other, the service coming up resolves it; `alerts` lists the states and
`alerts test` tries every webhook, each with its own result."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from helpers import free_port
from webhook_receiver import Receiver

STOP = 30


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def alerting_site(make_site, receiver, port: int):
    site = make_site(
        central={"mode": "remote", "url": f"http://127.0.0.1:{port}", "trusted": True, "request_timeout": "2s"},
        alerts={
            "webhooks": [
                {"name": "chat", "url": receiver.url("/chat"), "format": "slack"},
                {"name": "ops", "url": receiver.url("/ops"), "format": "json"},
            ],
            "rules": {"central_unreachable": {"seconds": "2s"}, "agent_stalled": {"enabled": False}},
        },
    )
    config = site.read_config()
    config["agents"]["alerts"] = "0.3s"
    site.write_config(config)
    return site


def stop(site, daemon: subprocess.Popen) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(STOP) == 0, site.log_tail()


def test_unreachable_central_fires_once_survives_a_restart_and_resolves(make_site, receiver):
    port = free_port()
    site = alerting_site(make_site, receiver, port)
    daemon = site.start_run()
    ops = receiver.wait(1, timeout=60, alert="central_unreachable", state="firing")
    chat = [m for m, p in zip(receiver.messages, receiver.paths, strict=True) if p == "/chat"]
    assert len(chat) == 1 and "[FIRING] t: central_unreachable (critical)" in chat[0]["text"]
    assert ops[0]["site"] == "t" and ops[0]["threshold"] == 2 and ops[0]["value"] >= 2
    site.wait_log(r"alert central_unreachable firing")

    time.sleep(3)  # ten more alert cycles while it still fires: nothing new
    assert len(receiver.messages) == 2
    stop(site, daemon)

    daemon = site.start_run()  # a new process: the state is in the DB, not announced again
    site.wait_log(r"daemon \S+ started for site t", count=2)
    time.sleep(4)  # unreachable again for longer than the rule's 2 s
    assert len(receiver.messages) == 2, receiver.messages
    listed = json.loads(site.cli("alerts", "--json").stdout)
    [alert] = [a for a in listed["alerts"] if a["rule"] == "central_unreachable"]
    assert alert["state"] == "firing" and alert["since"] == pytest.approx(
        time.mktime(time.strptime(ops[0]["since"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone, abs=1
    )
    assert listed["deliveries"] == {"chat": {"sent": 1}, "ops": {"sent": 1}}

    # the central service comes up where the daemon looks for it
    central = make_site("central", central={"mode": "embedded", "trusted": True})
    server = subprocess.Popen(
        central.argv("central", "serve", "--host", "127.0.0.1", "--port", str(port)),
        env=central.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        resolved = receiver.wait(1, timeout=60, alert="central_unreachable", state="resolved")
        assert resolved[0]["since"] == ops[0]["since"] and resolved[0]["value"] == 0
        receiver.wait(4, timeout=10)
        time.sleep(1)
        assert len(receiver.messages) == 4  # firing and resolved, to each of the two webhooks, once
        text = site.cli("alerts").stdout
        assert "central_unreachable" in text and "resolved" in text and "webhook ops: 2 sent" in text
        stop(site, daemon)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(STOP)


def test_alerts_test_reports_each_webhook(make_site, receiver):
    dead = free_port()
    site = make_site(
        alerts={
            "webhooks": [
                {"name": "chat", "url": receiver.url("/chat"), "format": "slack"},
                {"name": "ops", "url": receiver.url("/ops")},
                {"name": "down", "url": receiver.url("/down")},
                {"name": "gone", "url": f"http://127.0.0.1:{dead}/secret-path", "timeout": "2s"},
            ]
        }
    )
    receiver.fail_next(0)
    ok = site.cli("alerts", "test", "--webhook", "chat", "--webhook", "ops")
    assert "chat (slack): ok" in ok.stdout and "ops (json): ok" in ok.stdout
    assert len(receiver.messages) == 2
    slack, generic = (receiver.messages[receiver.paths.index(p)] for p in ("/chat", "/ops"))
    assert "[TEST] t: test" in slack["text"]
    assert generic["state"] == "test" and generic["site"] == "t" and generic["labels"] == {"webhook": "ops"}

    receiver.fail_next(1, 500)  # the first request of the next run: webhook "chat" is down this time
    proc = site.cli("alerts", "test", check=False)
    assert proc.returncode == 1
    out = proc.stdout
    assert "chat (slack): FAILED" in out and "HTTP 500" in out
    assert "ops (json): ok" in out and "down (json): ok" in out
    assert "gone (json): FAILED" in out and "webhook gone got no answer" in out
    assert "secret-path" not in out + proc.stderr  # a webhook URL may be a secret
    assert "2 of 4 webhook(s) failed" in proc.stderr

    unknown = site.cli("alerts", "test", "--webhook", "nope", check=False)
    assert unknown.returncode != 0 and "no webhook named nope" in unknown.stderr


def test_a_bad_alerts_config_names_file_line_and_key(make_site):
    site = make_site(
        alerts={
            "webhooks": [{"name": "ops", "url": "hooks.example.org/x", "fromat": "slack"}],
            "rules": {"agent_stalled": {"intervals": 0}, "task_faild": {}},
        }
    )
    proc = site.cli("alerts", "list", check=False)
    assert proc.returncode == 2
    err = proc.stderr
    assert f"{site.config_path}:" in err
    assert "alerts.webhooks[0].url: expected an http:// or https:// URL" in err
    assert "alerts.webhooks[0]: unknown key 'fromat'; did you mean 'format'?" in err or "fromat" in err
    assert "alerts.rules.agent_stalled.intervals" in err
    assert "unknown key 'task_faild'; did you mean 'task_failed'?" in err
