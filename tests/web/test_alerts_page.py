"""The monitor's alerts page and its JSON, served by the real central service over a harvester DB that holds
alert states as the alerts agent writes them (store/alerts.py)."""

from __future__ import annotations

from harvester_edge.store import alerts as alert_rows
from harvester_edge.store import open_store

from .conftest import T0, get, start


def plant_alerts(work) -> None:
    store = open_store(work / "harvester.db")
    try:
        with store.write() as conn:
            paused = {
                "rule": "queue_paused",
                "key": "q",
                "severity": "critical",
                "labels": {"queue": "q"},
                "value": 3.0,
                "threshold": 3.0,
                "summary": "queue q paused: 3 refused submissions in the last 10 minutes, no new workers",
            }
            alert_rows.fire(conn, paused, T0)
            quiet = {**paused, "rule": "worker_failures", "value": 10.0, "threshold": 50.0, "summary": "10% failed"}
            alert_rows.observe_ok(conn, quiet, T0)
            alert_rows.enqueue(conn, "ops", "queue_paused", "q", "firing", {"alert": "queue_paused"}, T0)
            alert_rows.mark_sent(conn, 1, T0)
    finally:
        store.close()


def test_alerts_page_lists_states_and_deliveries(seeded):
    plant_alerts(seeded["work"])
    central = start(seeded["work"])
    try:
        page = get(f"{central.url}/monitor/alerts")
        assert page.status_code == 200
        html = page.text
        assert '<a href="/monitor/alerts">alerts</a>' in html  # in the navigation of every page
        assert "1 firing" in html and "queue_paused" in html and "queue q paused" in html
        assert '<span class="state firing">firing</span>' in html
        assert "worker_failures" not in html  # never fired: only with ?all=1
        assert "<td>ops</td>" in html and '<td class="num">1</td>' in html  # the webhook took 1 message
        assert "worker_failures" in get(f"{central.url}/monitor/alerts?all=1").text

        doc = get(f"{central.url}/monitor/alerts.json").json()
        [alert] = doc["alerts"]
        assert alert["rule"] == "queue_paused" and alert["state"] == "firing" and alert["labels"] == {"queue": "q"}
        assert alert["value"] == 3 and alert["threshold"] == 3 and alert["since"] == T0
        assert doc["deliveries"] == {"ops": {"sent": 1}}
        assert len(get(f"{central.url}/monitor/alerts.json?all=1").json()["alerts"]) == 2

        dashboard = get(f"{central.url}/monitor/").text  # the count at a glance, linked to this page
        assert '<a class="tile alarm" href="/monitor/alerts">alerts<b>1</b>firing</a>' in dashboard
    finally:
        central.stop()


def test_alerts_need_a_token_outside_trusted_mode(seeded):
    plant_alerts(seeded["work"])
    central = start(seeded["work"], trusted=False)
    try:
        assert get(f"{central.url}/monitor/alerts").status_code == 403
        refused = get(f"{central.url}/monitor/alerts.json")
        assert refused.status_code == 403 and "token" in refused.json()["error"]
    finally:
        central.stop()


def test_alerts_page_without_a_harvester_db(tmp_path):
    from .conftest import seed_central

    work = tmp_path / "work"
    work.mkdir()
    seed_central(work / "central.db")
    central = start(work)
    try:
        assert "no alerts in the harvester DB" in get(f"{central.url}/monitor/alerts").text
        assert get(f"{central.url}/monitor/alerts.json").json()["alerts"] == []
    finally:
        central.stop()
