"""The monitor's error rules (suggest from a job, add, edit, delete, history) and a task's priority/share form,
served by the real central service: forms carry the CSRF token, changes need admin and are recorded with who."""

from __future__ import annotations

import html as htmllib
import re
import sqlite3

import requests

from .conftest import get, start
from .test_pages import csrf_token


def rules(work) -> list[tuple]:
    with sqlite3.connect(work / "central.db") as conn:
        return conn.execute("SELECT id, source, code, diag_pattern, class, status FROM error_classes").fetchall()


def test_suggest_a_rule_from_a_job_then_add_edit_and_delete_it(monitor):
    url, ids = monitor
    job_page = get(f"{url}/monitor/job/{ids['panda_id']}").text
    assert 'name="suggest" value="%d"' % ids["panda_id"] in job_page and "suggest a rule from this job" in job_page
    session = requests.Session()
    page = session.get(f"{url}/monitor/errors", params={"suggest": ids["panda_id"]}, timeout=10).text
    # the job did not fail itself: its ranges' most frequent failure, pre-filled in the add form
    form = re.search(r'<form class="rule" method="post" action="/monitor/errors/add">(.*?)</form>', page, re.S)
    assert form, page
    fields = dict(re.findall(r'name="(source|code|diag_pattern)" value="([^"]*)"', form.group(1)))
    assert fields == {"source": "event", "code": "65", "diag_pattern": "payload\\ crashed"}
    assert re.search(r'<option value="payload" selected>', form.group(1))
    token = csrf_token(page)
    added = session.post(
        f"{url}/monitor/errors/add",
        data={**fields, "class": "fatal", "status": "confirmed", "csrf": token},
        allow_redirects=False,
        timeout=10,
    )
    assert added.status_code == 303 and added.headers["location"].startswith("/monitor/errors?done=rule")
    new = [r for r in rules(ids["work"]) if r[3] == "payload\\ crashed"]
    assert [r[1:] for r in new] == [("event", 65, "payload\\ crashed", "fatal", "confirmed")]
    rule_id = new[0][0]
    editing = session.get(f"{url}/monitor/errors", params={"edit": rule_id}, timeout=10).text
    assert f'action="/monitor/errors/{rule_id}/edit"' in editing
    edited = session.post(
        f"{url}/monitor/errors/{rule_id}/edit",
        data={"class": "user", "diag_pattern": "crashed", "csrf": token},
        allow_redirects=False,
        timeout=10,
    )
    assert edited.status_code == 303
    assert [r[1:] for r in rules(ids["work"]) if r[0] == rule_id] == [("event", 65, "crashed", "user", "confirmed")]
    no_token = session.post(f"{url}/monitor/errors/{rule_id}/delete", data={}, timeout=10)
    assert no_token.status_code == 403 and rule_id in [r[0] for r in rules(ids["work"])]
    bad = session.post(f"{url}/monitor/errors/{rule_id}/edit", data={"code": "x", "csrf": token}, timeout=10)
    assert bad.status_code == 400 and "code must be an integer" in htmllib.unescape(bad.text)
    deleted = session.post(
        f"{url}/monitor/errors/{rule_id}/delete", data={"csrf": token}, allow_redirects=False, timeout=10
    )
    assert deleted.status_code == 303 and rule_id not in [r[0] for r in rules(ids["work"])]
    after = get(f"{url}/monitor/errors").text
    history = re.search(r'<table class="history">(.*?)</table>', after, re.S).group(1)
    actions = re.findall(r"<td>monitor \(trusted\)</td><td>(\d+)</td><td>(\w+)</td>", history)
    assert actions == [(str(rule_id), "delete"), (str(rule_id), "edit"), (str(rule_id), "add")]


def test_task_priority_and_share_form(monitor):
    url, ids = monitor
    session = requests.Session()
    page = session.get(f"{url}/monitor/task/{ids['task_id']}", timeout=10).text
    assert "priority 0 · share none" in page
    action = f"{url}/monitor/task/{ids['task_id']}/set"
    answer = session.post(
        action, data={"priority": "7", "share": "0.5", "csrf": csrf_token(page)}, allow_redirects=False, timeout=10
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith(f"/monitor/task/{ids['task_id']}?done=")
    assert "priority 7 · share 0.5" in session.get(f"{url}/monitor/task/{ids['task_id']}", timeout=10).text
    bad = session.post(action, data={"share": "3", "csrf": csrf_token(page)}, timeout=10)
    assert bad.status_code == 400 and "share must be a fraction" in bad.text


def test_token_mode_records_the_admin_and_refuses_readers(seeded):
    central = start(seeded["work"], trusted=False)
    try:
        url, authority = central.url, central.authority
        reader, admin = authority.issue("ops", ["harvester"]), authority.issue("alice", ["admin"])
        session = requests.Session()
        token = csrf_token(session.get(f"{url}/monitor/errors", params={"token": reader}, timeout=10).text)
        form = {"source": "pilot", "code": "1305", "diag_pattern": "", "class": "fatal", "csrf": token}
        assert session.post(f"{url}/monitor/errors/add", data=form, timeout=10).status_code == 403
        headers = {"Authorization": f"Bearer {admin}"}
        ok = session.post(f"{url}/monitor/errors/add", data=form, headers=headers, allow_redirects=False, timeout=10)
        assert ok.status_code == 303
        history = central.service.error_history()
        assert [(h["action"], h["who"]) for h in history] == [("add", "alice (monitor)")]
    finally:
        central.stop()
