"""task_failed and credential_expiring against a REMOTE central service: a real service (token mode) in its own
process on loopback (`harvester-edge central serve`), the site wired as the daemon wires it (build_site over the real
HTTP seam to that service, remote_transport), the real alerts agent, real token files issued by the service, and the
webhook receiver. The harvester's clock is a FakeClock started at the real time (the service keeps the real one), so
a token's last minutes can be reached without waiting for them."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import yaml

from alerts.conftest import QUEUE, QUIET, AlertSite
from doubles import BatchRunner, FakeClock
from harvester_edge.agents.alerter import Alerter
from harvester_edge.central.client import CentralClient
from harvester_edge.config import load_config
from harvester_edge.seams.files import DirectFiles
from harvester_edge.seams.http import HttpTransport
from harvester_edge.site import build_site, remote_transport, sync_queues
from harvester_edge.store import open_store
from helpers import central_service_config, cli, serve_central, wait_for

LIFETIME = 3600  # the service's tokens last an hour (tokens.initial_lifetime): the known pain


class Central:
    """A central service process in token mode and the tokens it issued (issue-token, as an operator does)."""

    def __init__(self, folder: Path) -> None:
        self.config, port = central_service_config(
            folder,
            trusted=False,
            db=str(folder / "central.db"),
            tokens={"initial_lifetime": LIFETIME, "key_min_interval": 0},
        )
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = serve_central(self.config)
        wait_for(self.alive, 60, "the central service answering")
        self.admin = self.client(self.issue("ops", "admin", "harvester"))

    def alive(self) -> bool:
        try:
            return requests.get(self.url + "/api/v1/system/is_alive", timeout=2).ok
        except requests.ConnectionError:
            return False

    def issue(self, name: str, *scopes: str) -> str:
        args = [a for s in scopes for a in ("--scope", s)]
        out = subprocess.run(
            [*cli(self.config), "central", "issue-token", name, *args, "--json"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(out.stdout)["token"]

    def client(self, token: str) -> CentralClient:
        return CentralClient(HttpTransport(self.url, timeout=10), token=token)

    def failed_task_of(self, harvester: str, name: str) -> int:
        """A task whose one job `harvester` takes and reports failed, through the API: the task fails (max_attempts
        1 x 1 job), as when a site's pilots keep failing."""
        task_id = self.admin.submit_task(
            {
                "name": name,
                "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {}},
                "events": 10,
                "events_per_range": 5,
                "seconds_per_event": 0.1,
                "jobs": 1,
                "max_attempts": 1,
            }
        )
        site = self.client(self.issue(harvester, "harvester", "pilot"))
        [job] = site.acquire_jobs(harvester, n_jobs=1, harvester_id=harvester)
        assert int(job["taskID"]) == task_id
        site.update_job(int(job["PandaID"]), "failed", pilot_error_code=1305, pilot_error_diag="payload crashed")
        assert self.admin.call("GET", "task/show", params={"task_id": task_id})["status"] == "failed"
        return task_id

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    service = Central(tmp_path / "central")
    yield service
    service.stop()


@pytest.fixture
def remote_site(tmp_path: Path, central: Central) -> Iterator[Callable[..., AlertSite]]:
    """remote_site(rules, webhooks, token=...) -> the site "site-a" on the remote service, its token in a file."""
    made: list[AlertSite] = []

    def make(rules: dict, webhooks: list[dict], token: str | None = None) -> AlertSite:
        root = tmp_path / f"site{len(made)}"
        root.mkdir()
        token_file = root / "token"
        token_file.write_text(token or central.issue("site-a", "harvester", "pilot"))
        token_file.chmod(0o600)
        path = root / "site.yaml"
        data = {
            "site": "site-a",
            "central": {
                "mode": "remote",
                "url": central.url,
                "trusted": False,
                "tokens": {"token_file": str(token_file)},
            },
            "queues": [QUEUE],
            "paths": {"work_dir": str(root / "work")},
            "alerts": {"webhooks": webhooks, "rules": {**QUIET, **rules}},
        }
        path.write_text(yaml.safe_dump(data))
        config = load_config(path)
        clock = FakeClock(time.time())
        store = open_store(config.db_path)
        sync_queues(store, config, clock.now())
        transport = remote_transport(config.central, central.url)  # the daemon's seam to a remote service
        ctx = build_site(config, BatchRunner(), transport, DirectFiles(), clock, store=store, daemon_id="alerts:1").ctx
        site = AlertSite(root, config, ctx, clock, transport, Alerter(ctx))  # type: ignore[arg-type]
        made.append(site)
        return site

    yield make
    for site in made:
        site.store.close()


def hook(receiver: Any) -> dict:
    return {"name": "ops", "url": receiver.url("/ops"), "format": "json"}


def test_task_failed_reads_this_harvesters_failed_tasks_through_the_api(central, remote_site, receiver, caplog):
    ours = central.failed_task_of("site-a", "ours")
    central.failed_task_of("site-b", "theirs")  # another site's failure on the same service: not site-a's alert
    site = remote_site({"task_failed": {"severity": "critical"}}, [hook(receiver)])
    site.cycle()
    [firing] = receiver.wait(1)
    assert firing["alert"] == "task_failed" and firing["labels"] == {"task": str(ours), "name": "ours"}
    assert "failed" in firing["summary"] and firing["severity"] == "critical"
    site.cycle(15)
    time.sleep(0.2)
    assert len(receiver.messages) == 1  # still failed: nothing new

    central.stop()  # unreachable: the alert keeps firing (no blind resolve), one line says why
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harvester_edge.alerts.rules"):
        site.cycle(15)
    lines = [r.getMessage() for r in caplog.records if r.name == "harvester_edge.alerts.rules"]
    assert len(lines) == 1 and "not evaluated this time" in lines[0] and "unreachable" in lines[0]
    [row] = site.rows("SELECT state FROM alerts WHERE rule = 'task_failed'")
    assert row["state"] == "firing"
    time.sleep(0.2)
    assert len(receiver.messages) == 1


def test_a_retried_task_resolves_and_an_erroring_service_changes_nothing(central, remote_site, receiver, caplog):
    task_id = central.failed_task_of("site-a", "flaky")
    site = remote_site({"task_failed": {}}, [hook(receiver)])
    site.cycle()
    receiver.wait(1)

    good = site.ctx.central.token_file.read_text()
    site.ctx.central.token_file.write_text(central.issue("site-b", "harvester"))  # a token the service refuses
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harvester_edge.alerts.rules"):
        site.cycle(15)
    assert any("403" in r.getMessage() for r in caplog.records if "task_failed" in r.getMessage())
    time.sleep(0.2)
    assert len(receiver.messages) == 1 and site.rows("SELECT state FROM alerts")[0]["state"] == "firing"

    site.ctx.central.token_file.write_text(good)
    central.admin.call("POST", "task/retry", body={"task_id": task_id})
    site.cycle(15)
    [resolved] = receiver.wait(1, state="resolved")
    assert resolved["labels"]["task"] == str(task_id) and "no longer the case" in resolved["summary"]


def test_an_answer_cut_at_its_bound_resolves_nothing_it_left_out(central, remote_site, receiver, monkeypatch):
    from harvester_edge.alerts import remote

    older = central.failed_task_of("site-a", "older")
    newer = central.failed_task_of("site-a", "newer")
    site = remote_site({"task_failed": {}}, [hook(receiver)])
    site.cycle()
    assert {m["labels"]["task"] for m in receiver.wait(2)} == {str(older), str(newer)}
    monkeypatch.setattr(remote, "FAILED_TASKS_LIMIT", 1)  # the service answers the newest only, truncated
    site.cycle(15)
    time.sleep(0.2)
    assert len(receiver.messages) == 2  # the older task's alert is not resolved for being left out
    assert {r["key"]: r["state"] for r in site.rows("SELECT key, state FROM alerts")} == {
        str(older): "firing",
        str(newer): "firing",
    }
    central.admin.call("POST", "task/retry", body={"task_id": newer})  # now the older one is all there is
    site.cycle(15)
    [resolved] = receiver.wait(1, state="resolved")
    assert resolved["labels"]["task"] == str(newer)
    time.sleep(0.2)
    assert len(receiver.messages) == 3


def test_the_token_in_use_alerts_before_it_expires_not_for_its_whole_hour(central, remote_site, receiver):
    site = remote_site({"credential_expiring": {}}, [hook(receiver)])  # hours: 24, as before
    token_file = site.ctx.central.token_file
    claims = jwt.decode(token_file.read_text(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == LIFETIME
    site.cycle()
    time.sleep(0.2)
    assert receiver.messages == []  # a fresh 1-hour token is no alert (24 hours would fire it for good)
    [row] = site.rows("SELECT key, state, threshold FROM alerts WHERE rule = 'credential_expiring'")
    assert row == {"key": f"token:{token_file}", "state": "ok", "threshold": round(LIFETIME / 6 / 3600, 4)}

    site.cycle(claims["exp"] - site.clock.now() - 300)  # 5 minutes left and not renewed: the credentials are stuck
    [firing] = receiver.wait(1)
    assert firing["alert"] == "credential_expiring" and firing["labels"] == {"token_file": str(token_file)}
    assert "expires in 5m" in firing["summary"]

    token_file.write_text(central.issue("site-a", "harvester", "pilot"))  # renewed: a token issued now, 1h left
    site.clock.advance(time.time() - site.clock.now())  # the harvester's clock back beside the service's
    site.cycle()
    receiver.wait(1, state="resolved")


def test_the_token_lead_is_configurable_and_an_unreadable_token_file_changes_nothing(
    central, remote_site, receiver, caplog
):
    site = remote_site({"credential_expiring": {"token_lead": "2h"}}, [hook(receiver)])
    site.cycle()
    [firing] = receiver.wait(1)  # an hour left, alerted two hours before
    assert firing["threshold"] == 2.0 and 0.9 < firing["value"] <= 1.0

    token_file = site.ctx.central.token_file
    token_file.unlink()
    token_file.mkdir()  # not a regular file: not read, the alert stays as it is
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harvester_edge.alerts.rules"):
        site.cycle(1)
    assert any("not a regular file" in r.getMessage() for r in caplog.records)
    token_file.rmdir()
    token_file.write_text("x" * (64 * 1024 + 1))  # over the cap: not read either
    site.cycle(1)
    assert any("over 65536 bytes" in r.getMessage() for r in caplog.records)
    time.sleep(0.2)
    assert len(receiver.messages) == 1
    assert site.rows("SELECT state FROM alerts WHERE rule = 'credential_expiring'")[0]["state"] == "firing"
