"""The monitor shows the brokerage estimates (task page) and cores against the pledge with the work shortage (sites)."""

from __future__ import annotations

from .conftest import get


def test_task_page_shows_the_estimates(monitor):
    url, ids = monitor
    html = get(f"{url}/monitor/task/{ids['task_id']}").text
    assert 'id="estimates"' in html
    assert "0 of 10 done" in html and "MB (declared; declared" in html


def test_sites_page_shows_cores_against_the_pledge_and_the_shortage(monitor):
    url, _ = monitor
    html = get(f"{url}/monitor/sites").text
    assert 'id="pledges"' in html and "cores and pledges" in html
    assert "mode auto" in html
