"""The alerts agent in process, against a real HTTP receiver: one message per firing alert, none while it stays,
a resolved message when it clears, per-webhook rate limits, backoff on a failing webhook, state across a restart,
and the same conditions as Prometheus metrics."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from central.conftest import backend, central_db, pg_cluster  # fixtures: both backends
from doubles import Outage
from harvester_edge.central.client import CentralUnavailable
from harvester_edge.metrics import DatabaseCollector


def hook(receiver, name: str = "ops", **over) -> dict:
    return {"name": name, "url": receiver.url(f"/{name}"), "format": "json", **over}


def test_a_firing_alert_sends_one_message_then_nothing_then_resolved(make_alert_site, receiver):
    site = make_alert_site(rules={"queue_paused": {}}, webhooks=[hook(receiver)])
    site.cycle()
    assert receiver.messages == []  # nothing wrong yet: no message
    site.failed_workers(3)  # the submitter's pause: 3 refused submissions in 10 minutes

    site.cycle(1)
    [firing] = receiver.wait(1)
    assert firing["alert"] == "queue_paused" and firing["state"] == "firing"
    assert firing["severity"] == "warning" and firing["labels"] == {"queue": "q"}
    assert firing["value"] == 3 and firing["threshold"] == 3 and firing["site"] == "unit"
    assert firing["since"].endswith("Z") and "queue q paused" in firing["summary"]
    assert receiver.paths == ["/ops"]

    for _ in range(5):  # repeated cycles while it still fires: no duplicate
        site.cycle(5)
    time.sleep(0.2)
    assert len(receiver.messages) == 1
    [row] = site.rows("SELECT * FROM alerts WHERE rule = 'queue_paused'")
    assert row["state"] == "firing" and row["key"] == "q"

    site.cycle(601)  # the failures are older than the submitter's 10 minutes: the pause is over
    resolved = receiver.wait(1, state="resolved")
    assert resolved[0]["alert"] == "queue_paused" and resolved[0]["since"] == firing["since"]
    assert resolved[0]["value"] == 0
    for _ in range(3):
        site.cycle(5)
    assert len(receiver.messages) == 2
    sent = site.rows("SELECT status, count(*) AS n FROM alert_messages GROUP BY status")
    assert sent == [{"status": "sent", "n": 2}]


def test_slack_format_is_a_text_message(make_alert_site, receiver):
    site = make_alert_site(
        rules={"queue_paused": {"severity": "critical"}}, webhooks=[hook(receiver, "chat", format="slack")]
    )
    site.failed_workers(4)
    site.cycle()
    [message] = receiver.wait(1)
    assert list(message) == ["text"]
    assert "[FIRING] unit: queue_paused (critical)" in message["text"]
    assert "value 4, threshold 3" in message["text"]


def test_every_webhook_gets_the_message_and_a_rate_limit_holds_the_rest_back(make_alert_site, receiver):
    site = make_alert_site(
        rules={"agent_stalled": {"intervals": 3}},
        webhooks=[hook(receiver, "slow", max_messages=2, per="1h"), hook(receiver, "fast")],
    )
    site.cycle()
    site.cycle(1000)  # no agent completed a cycle in 1000 s: every watched agent stalls (7 alerts)
    fast = [m for m, p in zip(receiver.messages, receiver.paths, strict=True) if p == "/fast"]
    slow = [m for m, p in zip(receiver.messages, receiver.paths, strict=True) if p == "/slow"]
    assert len(fast) == 7 and {m["labels"]["agent"] for m in fast} >= {"fetcher", "submitter", "credentials"}
    assert len(slow) == 2  # its rate limit: 2 per hour
    pending = site.rows("SELECT count(*) AS n FROM alert_messages WHERE webhook = 'slow' AND status = 'pending'")
    assert pending == [{"n": 5}]
    site.cycle(60)
    assert len(receiver.messages) == 9  # still held back within the hour
    site.cycle(3600)
    paths = receiver.paths
    assert paths.count("/slow") == 4 and paths.count("/fast") == 7  # the next two of the held ones, in order
    slow_now = [m for m, p in zip(receiver.messages, receiver.paths, strict=True) if p == "/slow"]
    assert [m["labels"]["agent"] for m in slow_now] == [m["labels"]["agent"] for m in fast[:4]]


def test_a_failing_webhook_is_retried_with_backoff_and_never_breaks_the_cycle(make_alert_site, receiver):
    site = make_alert_site(rules={"queue_paused": {}}, webhooks=[hook(receiver)])
    site.failed_workers(3)
    receiver.fail_next(2, 503)
    site.cycle()
    assert site.agent.stats.errors == 0 and receiver.refused == 1 and receiver.messages == []
    [msg] = site.rows("SELECT status, attempts, last_error FROM alert_messages")
    assert msg["status"] == "pending" and msg["attempts"] == 1 and "HTTP 503" in msg["last_error"]
    site.cycle(1)  # within the backoff (5 s): no try
    assert receiver.refused == 1
    site.cycle(5)
    assert receiver.refused == 2  # second try, refused again: now 10 s
    site.cycle(5)
    assert receiver.refused == 2 and receiver.messages == []
    site.cycle(6)
    receiver.wait(1)
    [msg] = site.rows("SELECT status, attempts, last_error FROM alert_messages")
    assert msg == {"status": "sent", "attempts": 3, "last_error": None}


def test_an_unreachable_webhook_costs_at_most_its_timeout(make_alert_site, receiver):
    import socket

    with socket.socket() as s:  # a port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    site = make_alert_site(
        rules={"queue_paused": {}},
        webhooks=[{"name": "dead", "url": f"http://127.0.0.1:{dead}/x", "timeout": "1s"}, hook(receiver)],
    )
    site.failed_workers(3)
    started = time.monotonic()
    site.cycle()
    assert time.monotonic() - started < 5
    assert site.agent.stats.errors == 0
    receiver.wait(1)  # the other webhook got its message all the same
    [dead_row] = site.rows("SELECT last_error FROM alert_messages WHERE webhook = 'dead'")
    assert "webhook dead got no answer" in dead_row["last_error"] and str(dead) not in dead_row["last_error"]


def test_a_restart_neither_resends_nor_forgets_to_resolve(make_alert_site, receiver):
    site = make_alert_site(rules={"queue_paused": {}}, webhooks=[hook(receiver)])
    site.failed_workers(3)
    site.cycle()
    receiver.wait(1)

    site = site.restart()  # a new daemon: nothing in memory, the state is in the DB
    for _ in range(3):
        site.cycle(5)
    time.sleep(0.2)
    assert len(receiver.messages) == 1
    site.cycle(700)
    receiver.wait(1, state="resolved")
    assert len(receiver.messages) == 2


def test_central_unreachable_fires_after_its_seconds_and_resolves_on_an_answer(make_alert_site, receiver):
    site = make_alert_site(rules={"central_unreachable": {"seconds": "60s"}}, webhooks=[hook(receiver)])
    central = site.ctx.central
    site.transport.on("system/is_alive", Outage, Outage, {"alive": True})
    with pytest.raises(CentralUnavailable):
        central.call("GET", "system/is_alive")
    site.cycle(30)
    assert receiver.messages == []  # 30 s: not yet
    with pytest.raises(CentralUnavailable):
        central.call("GET", "system/is_alive")
    site.cycle(31)
    [firing] = receiver.wait(1)
    assert firing["alert"] == "central_unreachable" and firing["severity"] == "critical"
    assert firing["value"] >= 60 and firing["threshold"] == 60
    central.call("GET", "system/is_alive")
    site.cycle(1)
    [resolved] = receiver.wait(1, state="resolved")
    assert resolved["value"] == 0


def test_worker_failures_above_the_percentage_in_the_window(make_alert_site, receiver):
    site = make_alert_site(
        rules={"worker_failures": {"percent": 50, "window": "1h", "min_workers": 4}}, webhooks=[hook(receiver)]
    )
    site.failed_workers(3, state="finished")
    site.failed_workers(1)
    site.cycle()
    assert receiver.messages == []  # 25 %
    site.failed_workers(3)
    site.cycle(1)
    [firing] = receiver.wait(1)
    assert firing["alert"] == "worker_failures" and firing["value"] == pytest.approx(57.1)
    site.cycle(3700)  # they all ended more than an hour ago
    receiver.wait(1, state="resolved")


def test_outbox_rejected_messages(make_alert_site, receiver):
    site = make_alert_site(rules={"outbox_rejected": {"window": "1h"}}, webhooks=[hook(receiver)])
    now = site.clock.now()
    with site.store.write() as conn:
        conn.execute(
            "INSERT INTO outbox (kind, state, payload, last_error, created_at, updated_at) "
            "VALUES ('update_jobs', 'rejected', '[]', 'HTTP 400', ?, ?)",
            (now, now),
        )
    site.cycle()
    [firing] = receiver.wait(1)
    assert firing["alert"] == "outbox_rejected" and firing["value"] == 1
    site.cycle(3601)
    receiver.wait(1, state="resolved")


def test_the_conditions_are_prometheus_metrics_too(make_alert_site, receiver):
    site = make_alert_site(rules={"queue_paused": {}, "worker_failures": {}}, webhooks=[hook(receiver)])
    site.failed_workers(3)
    site.cycle()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(None, site.config.db_path))
    text = generate_latest(registry).decode()
    assert 'harvester_edge_alert_firing{rule="queue_paused"} 1.0' in text
    assert 'harvester_edge_alert_firing{rule="task_failed"} 0.0' in text  # every rule has its gauge
    assert 'harvester_edge_alert_active{key="q",rule="queue_paused"} 1.0' in text
    assert 'harvester_edge_alert_value{key="q",rule="queue_paused"} 3.0' in text
    assert 'harvester_edge_alert_threshold{key="q",rule="queue_paused"} 3.0' in text
    assert 'harvester_edge_alert_value{key="q",rule="worker_failures"} 100.0' in text  # observed, not firing
    assert 'harvester_edge_alert_active{key="q",rule="worker_failures"} 0.0' in text
    assert "harvester_edge_alerts_evaluated_timestamp_seconds" in text


def test_alert_rules_of_the_config_are_the_rules_evaluated():
    from harvester_edge.alerts.rules import EVALUATORS, RULES
    from harvester_edge.config import AlertRules

    assert set(AlertRules.model_fields) == set(RULES) == set(EVALUATORS)


def test_a_failed_task_of_the_embedded_service_fires_and_a_retry_resolves_it(
    make_alert_site, receiver, tmp_path, central_db
):
    """On either backend of the embedded service: the agent reads its SQLite file or its PostgreSQL database."""
    from harvester_edge.central.service import CentralService
    from harvester_edge.central.settings import CentralSettings
    from harvester_edge.central.store import tasks

    db = central_db
    service = CentralService.open(db, CentralSettings(db=db, files_dir=tmp_path / "files"))
    try:
        task_id = service.submit_task(
            {
                "name": "doomed",
                "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {}},
                "events": 10,
                "events_per_range": 5,
                "seconds_per_event": 0.1,
                "jobs": 1,
            }
        )
        site = make_alert_site(
            rules={"task_failed": {"severity": "critical"}},
            webhooks=[hook(receiver)],
            central={"mode": "embedded", "trusted": True, "db": str(db), "files_dir": str(tmp_path / "files")},
        )
        site.cycle()
        assert receiver.messages == []
        service.db.write(tasks.close, task_id, "failed", "too many job failures", site.clock.now())
        site.cycle(1)
        [firing] = receiver.wait(1)
        assert firing["alert"] == "task_failed" and firing["labels"] == {"task": str(task_id), "name": "doomed"}
        assert "too many job failures" in firing["summary"] and firing["severity"] == "critical"
        site.cycle(1)
        assert len(receiver.messages) == 1
        service.retry_task(task_id)
        site.cycle(1)
        [resolved] = receiver.wait(1, state="resolved")
        assert resolved["labels"]["task"] == str(task_id) and "no longer the case" in resolved["summary"]
    finally:
        service.close()


def test_a_token_file_expiring_within_the_hours_fires(make_alert_site, receiver, tmp_path):
    import jwt

    from doubles import NOW

    token_file = tmp_path / "token"
    token_file.write_text(jwt.encode({"sub": "unit", "exp": int(NOW + 3 * 3600)}, "k" * 32, algorithm="HS256"))
    token_file.chmod(0o600)
    site = make_alert_site(
        rules={"credential_expiring": {"hours": 24}},
        webhooks=[hook(receiver)],
        central={
            "mode": "remote",
            "url": "http://central.test",
            "trusted": False,
            "tokens": {"token_file": str(token_file)},
        },
    )
    site.cycle()
    [firing] = receiver.wait(1)
    assert firing["alert"] == "credential_expiring" and firing["value"] == 3.0 and firing["threshold"] == 24
    assert firing["labels"] == {"token_file": str(token_file)} and "expires in 3h00m" in firing["summary"]
    token_file.write_text(jwt.encode({"sub": "unit", "exp": int(NOW + 48 * 3600)}, "k" * 32, algorithm="HS256"))
    site.cycle(1)  # renewed outside (as on real sites): resolved
    receiver.wait(1, state="resolved")


def test_a_recording_keeps_webhook_calls_under_the_webhook_name_never_its_url(make_alert_site, receiver, tmp_path):
    from harvester_edge.replay import trace
    from harvester_edge.replay.recorder import Recording, config_snapshot
    from harvester_edge.site import recorded_webhooks

    site = make_alert_site(
        rules={"queue_paused": {}}, webhooks=[hook(receiver, "ops", url=receiver.url("/services/T0/B0/s3cr3t"))]
    )
    recording = Recording.start(tmp_path / "trace.jsonl", site.config, site.store, site.clock)
    site.agent.deliverer.transport_for = recorded_webhooks(recording)
    site.failed_workers(3)
    site.cycle()
    recording.close()
    receiver.wait(1)
    assert receiver.paths == ["/services/T0/B0/s3cr3t"]  # the real URL was called
    head, records = trace.read_trace(tmp_path / "trace.jsonl")
    [call] = [r for r in records if r["kind"] == "http"]
    assert call["path"] == "webhook/ops" and call["status"] == 200 and call["json"]["alert"] == "queue_paused"
    text = (tmp_path / "trace.jsonl").read_text()
    assert "s3cr3t" not in text  # neither in the calls nor in the config the trace's head keeps
    assert config_snapshot(site.config)["alerts"]["webhooks"][0]["url"] == "https://redacted.invalid/ops"


def test_fire_after_holds_a_condition_back_until_it_lasts(make_alert_site, receiver):
    site = make_alert_site(rules={"queue_paused": {"fire_after": "2m"}}, webhooks=[hook(receiver)])
    site.failed_workers(3)
    began = site.clock.now()
    site.cycle()
    site.cycle(60)
    [row] = site.rows("SELECT state, since FROM alerts WHERE rule = 'queue_paused'")
    assert row == {"state": "pending", "since": began}  # held, announced to nobody
    assert site.rows("SELECT count(*) AS n FROM alert_messages") == [{"n": 0}]

    site.cycle(61)  # held for 121 s >= 2 minutes: it fires, dated from when the condition began
    [firing] = receiver.wait(1)
    assert firing["state"] == "firing" and firing["alert"] == "queue_paused"
    [row] = site.rows("SELECT state, since FROM alerts WHERE rule = 'queue_paused'")
    assert row == {"state": "firing", "since": began}


def test_fire_after_forgets_a_blip_that_clears_before_it_lasts(make_alert_site, receiver):
    site = make_alert_site(rules={"queue_paused": {"fire_after": "15m"}}, webhooks=[hook(receiver)])
    site.failed_workers(3)
    site.cycle()
    site.cycle(601)  # the submitter's 10-minute window has passed: the pause is over before 15 minutes
    [row] = site.rows("SELECT state FROM alerts WHERE rule = 'queue_paused'")
    assert row == {"state": "ok"}
    site.cycle(600)
    time.sleep(0.2)
    assert receiver.messages == [] and site.rows("SELECT count(*) AS n FROM alert_messages") == [{"n": 0}]


def test_resolve_after_keeps_a_flapping_alert_firing_with_one_message(make_alert_site, receiver):
    site = make_alert_site(rules={"queue_paused": {"resolve_after": "5m"}}, webhooks=[hook(receiver)])
    site.failed_workers(3)
    site.cycle()
    receiver.wait(1)

    site.cycle(601)  # clear, but not for 5 minutes yet: still firing, the moment it cleared noted
    [row] = site.rows("SELECT state, clear_since FROM alerts WHERE rule = 'queue_paused'")
    assert row == {"state": "firing", "clear_since": site.clock.now()}
    site.failed_workers(3)  # and it comes back: goes on firing, nothing sent, the clearing forgotten
    site.cycle(10)
    [row] = site.rows("SELECT state, clear_since FROM alerts WHERE rule = 'queue_paused'")
    assert row == {"state": "firing", "clear_since": None}

    site.cycle(601)
    site.cycle(299)
    time.sleep(0.2)
    assert len(receiver.messages) == 1  # 4 min 59 s clear: not resolved yet
    site.cycle(2)
    [resolved] = receiver.wait(1, state="resolved")
    assert resolved["alert"] == "queue_paused"
    assert len(receiver.messages) == 2


def test_status_lists_what_fires(make_alert_site, receiver):
    from harvester_edge import status

    site = make_alert_site(rules={"queue_paused": {}}, webhooks=[hook(receiver)])
    site.failed_workers(3)
    site.cycle()
    snapshot = status.collect(site.config)
    [firing] = snapshot["alerts_firing"]
    assert firing["rule"] == "queue_paused" and firing["key"] == "q" and "queue q paused" in firing["summary"]
    text = status.alert_lines(snapshot["alerts_firing"])
    assert text.splitlines()[0].endswith("alerts: 1 firing[/red] (harvester-edge alerts)")
    assert "queue_paused[q]: queue q paused" in text
    site.cycle(700)
    assert status.collect(site.config)["alerts_firing"] == []
