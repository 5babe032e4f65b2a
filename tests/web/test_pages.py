"""The monitor's pages, served by the real central service on 127.0.0.1 over seeded central + harvester DBs."""

from __future__ import annotations

import re
import sqlite3

import requests

from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.central.tokens import TokenAuthority

from .conftest import get, start


def test_dashboard_shows_tasks_events_per_minute_and_workers_per_queue(monitor):
    url, ids = monitor
    page = get(f"{url}/monitor/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert f'href="/monitor/task/{ids["task_id"]}"' in html and "seeded" in html
    assert "events finished per minute" in html and "<svg" in html
    assert '<meta http-equiv="refresh" content="10">' in html  # refreshes itself
    # workers by state per queue, from the harvester DB next to the central DB
    row = re.search(r"<tr><td>q</td>(.*?)</tr>", html, re.DOTALL).group(1)
    assert ">1<" in row
    assert get(f"{url}/monitor/?refresh=0").text.count('http-equiv="refresh"') == 0


def test_task_page_progress_events_jobs_and_errors(monitor):
    url, ids = monitor
    html = get(f"{url}/monitor/task/{ids['task_id']}").text
    assert "30 of 100 events finished (30.0%)" in html.replace("<b>", "").replace("</b>", "")
    assert 'style="width: 30.0%"' in html  # the progress bar
    assert "finished</span> 30" in html and "ready</span> 50" in html and "sent</span> 20" in html
    assert f'href="/monitor/job/{ids["panda_id"]}"' in html
    assert "payload crashed" in html
    assert get(f"{url}/monitor/task/999").status_code == 404


def test_job_page_workers_logs_ranges_and_memory_plot(monitor):
    url, ids = monitor
    html = get(f"{url}/monitor/job/{ids['panda_id']}").text
    assert 'href="/monitor/worker/1"' in html
    for name in ("local.out", "local.err", "logs/payload.0.log"):
        assert f'file?name={name.replace("/", "%2F")}"' in html or f'file?name={name}"' in html
    assert "RSS per rank" in html and "CPU time per rank" in html
    assert html.count("<polyline") == 4  # two ranks x (RSS, CPU)
    assert "rank 1" in html and "max RSS 70MB" in html
    assert re.search(r"<td class=\"num\">1</td><td class=\"num\">1</td><td class=\"num\">10</td>", html)
    assert get(f"{url}/monitor/job/4242").status_code == 404


def test_worker_page_batch_id_history_script_and_output(monitor):
    url, _ = monitor
    html = get(f"{url}/monitor/worker/1").text
    assert "local:4242" in html
    assert html.count("<td>step ") == 4  # the state history
    assert "mpirun -n 2 jumbo-pilot" in html  # the batch script
    assert "payload says hello on stdout" in html and "jumbo.pilot INFO step 39" in html
    log = get(f"{url}/monitor/worker/1/file", params={"name": "logs/payload.0.log"})
    assert log.status_code == 200 and "PAYLOAD-LOG-LINE" in log.text
    for bad in ("../../central.db", "/etc/passwd", "logs/../../../harvester.db", "missing.log"):
        assert get(f"{url}/monitor/worker/1/file", params={"name": bad}).status_code == 404
    assert get(f"{url}/monitor/worker/77").status_code == 404


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "the monitor page has no CSRF field"
    return found.group(1)


def test_errors_page_groups_failures_and_promotes_a_suggestion(monitor):
    url, ids = monitor
    html = get(f"{url}/monitor/errors").text
    group = re.search(
        r"<tr><td>event</td><td class=\"num\">65</td><td>payload crashed</td>"
        r"<td class=\"num\">(\d+)</td>",
        html,
    )
    assert group and group.group(1) == "2"
    assert f"payload? (suggested #{ids['rule']})" in html  # its classification, until confirmed
    assert f'action="/monitor/errors/{ids["rule"]}/promote"' in html
    session = requests.Session()  # a browser: the page sets the CSRF cookie, the form carries the token
    token = csrf_token(session.get(f"{url}/monitor/errors", timeout=10).text)
    answer = session.post(
        f"{url}/monitor/errors/{ids['rule']}/promote",
        data={"class": "system", "csrf": token},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith("/monitor/errors")
    with sqlite3.connect(ids["work"] / "central.db") as conn:
        assert conn.execute("SELECT status, class FROM error_classes WHERE id=?", (ids["rule"],)).fetchone() == (
            "confirmed",
            "system",
        )
    after = get(f"{url}/monitor/errors").text
    assert f'action="/monitor/errors/{ids["rule"]}/promote"' not in after
    assert '<td class="num">2</td><td>system</td>' in after  # the group now shows the confirmed class
    bad = session.post(
        f"{url}/monitor/errors/{ids['rule']}/promote", data={"class": "nonsense", "csrf": token}, timeout=10
    )
    assert bad.status_code == 400 and "not one of" in bad.text


def test_sites_page_queues_and_harvesters(monitor):
    url, _ = monitor
    html = get(f"{url}/monitor/sites").text
    assert "<td>q</td><td>local</td><td>no</td><td>finished=1</td><td>running=1</td>" in html
    assert "harvester-t" in html
    assert '<a href="/monitor/worker/1">1</a>' in html  # the workers list links to each worker


def test_tables_sort_filter_and_page_through_the_url(monitor):
    url, ids = monitor
    page = f"{url}/monitor/job/{ids['panda_id']}"
    first = lambda html: re.findall(r"<tr><td class=\"num\">(\d+)</td>", html)
    assert first(get(page).text) == ["1", "2", "3", "4", "5"]
    assert first(get(page, params={"ranges.sort": "process_id", "ranges.desc": "1"}).text) == ["5", "4", "3", "2", "1"]
    filtered = get(page, params={"ranges.q": "crashed"}).text
    assert first(filtered) == ["4", "5"] and "2 of 5 rows" in filtered


def test_token_mode_needs_a_reader_token_and_admin_to_promote(seeded):
    central = start(seeded["work"], trusted=False)
    try:
        url, authority = central.url, central.authority
        assert get(f"{url}/monitor/").status_code == 403
        assert get(f"{url}/metrics").status_code == 403
        reader = authority.issue("ops", ["harvester"])
        assert get(f"{url}/monitor/", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
        session = requests.Session()
        assert session.get(f"{url}/monitor/?token={reader}", timeout=10).status_code == 200
        assert session.get(f"{url}/monitor/task/{seeded['task_id']}", timeout=10).status_code == 200  # cookie
        assert (
            session.get(f"{url}/monitor/", params={"token": authority.issue("p", ["pilot"])}, timeout=10).status_code
            == 403
        )
        promote = f"{url}/monitor/errors/{seeded['rule']}/promote"
        form = {"csrf": csrf_token(session.get(f"{url}/monitor/errors", params={"token": reader}, timeout=10).text)}
        assert session.post(promote, data=form, timeout=10).status_code == 403  # harvester scope may only read
        admin = authority.issue("root", ["admin"])
        assert (
            session.post(
                promote, data=form, headers={"Authorization": f"Bearer {admin}"}, timeout=10, allow_redirects=False
            ).status_code
            == 303
        )
    finally:
        central.stop()


def test_metrics_exposes_states_outbox_system_metrics_and_http_latency(monitor):
    url, ids = monitor
    get(f"{url}/monitor/")
    text = get(f"{url}/metrics").text
    assert 'harvester_edge_central_event_ranges{state="finished"} 3.0' in text
    assert 'harvester_edge_central_event_ranges{state="sent"} 2.0' in text
    assert f'harvester_edge_events_finished_total{{task="{ids["task_id"]}"}} 30.0' in text
    assert 'harvester_edge_workers{queue="q",state="finished"} 1.0' in text
    assert 'harvester_edge_jobs{state="running"} 1.0' in text
    assert 'harvester_edge_outbox_depth{state="pending"} 1.0' in text
    assert 'harvester_edge_queue_time_seconds_avg{queue="q"} 4.0' in text
    assert "harvester_edge_task_active_seconds_avg" in text
    assert re.search(
        r'harvester_edge_http_request_seconds_count\{code="200",method="GET",route="/monitor/"\} '
        r"[1-9]",
        text,
    )
    assert "harvester_edge_agent_cycle_seconds" in text and "harvester_edge_batch_command_seconds" in text


def test_token_key_expiry_is_exported(seeded):
    path = seeded["work"] / "central.db"
    svc = CentralService.open(path, CentralSettings(db=path))
    try:
        authority = TokenAuthority(svc.db, CentralSettings().tokens, b"s" * 32, svc.clock)
        authority.pilot_credentials("pilot-7")
    finally:
        svc.close()
    central = start(seeded["work"])
    try:
        text = get(f"{central.url}/metrics").text
    finally:
        central.stop()
    value = float(re.search(r'harvester_edge_token_key_expiry_seconds\{client="pilot-7"\} (\S+)', text).group(1))
    assert 95 * 3600 < value <= 96 * 3600


def test_long_lists_page(monitor):
    url, ids = monitor
    with sqlite3.connect(ids["work"] / "harvester.db") as conn:
        conn.executemany(
            "INSERT INTO workers (queue, state, job_name, access_point, nodes, ranks_per_node, walltime, "
            "created_at, updated_at) VALUES ('q', 'queued', ?, '/nonexistent', 1, 1, 60, 0, 0)",
            [(f"w-{i}",) for i in range(2, 62)],
        )
    first = get(f"{url}/monitor/sites").text
    assert "61 of 61 rows" in first and "page 1 / 2" in first
    assert '<a href="/monitor/worker/61">61</a>' in first and '<a href="/monitor/worker/1">1</a>' not in first
    nxt = re.search(r'href="([^"]*workers\.page=2[^"]*)"', first).group(1).replace("&amp;", "&")
    second = get(f"{url}/monitor/sites{nxt}").text
    assert "page 2 / 2" in second and '<a href="/monitor/worker/1">1</a>' in second


def test_the_service_root_leads_to_the_monitor(monitor):
    url, ids = monitor
    bare = get(f"{url}/", allow_redirects=False)
    assert bare.status_code == 307 and bare.headers["location"] == "/monitor/"
    page = get(f"{url}/")
    assert page.status_code == 200 and page.url == f"{url}/monitor/"
    assert f'href="/monitor/task/{ids["task_id"]}"' in page.text
    assert "/" not in get(f"{url}/openapi.json").json()["paths"]  # a convenience, like /monitor: not an API route
