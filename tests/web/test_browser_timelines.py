"""Issue 19 in a real browser while a task runs: a real daemon (embedded central service, local batch plugin, real
MPI pilots) runs a task while headless Chromium (no network but loopback) takes a screenshot of the dashboard, the
task, job and sites pages, the API docs and the `harvester-edge report` file, and checks that every chart has data
points and labels, reading the SVG elements the browser drew."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
from pathlib import Path

import pytest

from .conftest import wait_for
from .test_browser import _up, site

pytestmark = pytest.mark.mpi

FACTS = """
return Array.from(document.querySelectorAll('svg.chart')).map(svg => ({
  title: svg.getAttribute('aria-label'),
  width: svg.getBoundingClientRect().width,
  series: Array.from(svg.querySelectorAll('polyline.series')).map(p => [+p.dataset.points, +p.dataset.max]),
  bars: Array.from(svg.querySelectorAll('rect')).filter(r => r.querySelector('title') && +r.getAttribute('height') > 0)
            .length,
  labels: Array.from(svg.querySelectorAll('text')).map(t => t.textContent.trim()).filter(t => t),
  empty: svg.querySelectorAll('.cnote').length > 0,
}));
"""


def charts(browser) -> dict[str, dict]:
    return {c["title"]: c for c in browser.execute_script(FACTS)}


def check(chart: dict, title: str, positive: bool = True) -> None:
    """The chart has drawn data points (a series with points, above zero when `positive`, or bars) and labels."""
    assert not chart["empty"], f"{title}: says it has no data"
    points = [n for n, top in chart["series"] if n > 0 and ((top or 0) > 0 or not positive)]
    assert points or chart["bars"] > 0, f"{title}: no data points drawn: {chart}"
    assert len(chart["labels"]) >= 3 and title.split(":")[0].split(" (")[0] in " ".join(chart["labels"]), chart
    assert chart["width"] > 300, chart


def busy_ranges(work: Path) -> int:
    try:
        with sqlite3.connect(f"file:{work / 'harvester.db'}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM event_ranges WHERE result IS NOT NULL").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def workers_ended(work: Path) -> bool:
    """At least one worker, and none of them still new, submitting, queued or running."""
    with sqlite3.connect(f"file:{work / 'harvester.db'}?mode=ro", uri=True, timeout=5) as conn:
        states = [s for (s,) in conn.execute("SELECT state FROM workers")]
    return bool(states) and not set(states) & {"new", "submitting", "queued", "running"}


def test_timelines_and_report_while_a_task_runs(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, task_id, work = site["url"], site["task_id"], site["work"]
    wait_for(lambda: _up(url), 60, "the central service to serve /monitor/")

    def task_status() -> dict:
        return json.loads(site["cli"]("task", "show", str(task_id), "--json"))

    wait_for(
        lambda: task_status()["events_finished"] > 0 and busy_ranges(work) > 0,
        120,
        "finished events with the pilot's timings in the harvester DB",
    )
    shots: list[Path] = []

    def visit(path: str, name: str) -> dict[str, dict]:
        browser.get(f"{url}{path}?refresh=0" if path.startswith("/monitor") else path)
        section = browser.find_elements(By.CSS_SELECTOR, "section.timelines")
        if section:
            browser.execute_script("arguments[0].scrollIntoView()", section[0])
        shot = tmp_path / f"{len(shots) + 1:02d}-{name}.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        shots.append(shot)
        return charts(browser)

    dash = visit("/monitor/", "dashboard")
    check(dash["running workers per queue (last 24 h)"], "running workers per queue")
    check(dash["cores in use per queue (last 24 h)"], "cores in use per queue")
    check(dash["events finished per minute (last 30 min)"], "events finished per minute")
    legend = dash["running workers per queue (last 24 h)"]["labels"]  # the queue with the workers running now
    assert any(re.fullmatch(r"q \([1-9]\d*\)", label) for label in legend), legend

    task = visit(f"/monitor/task/{task_id}", "task")
    check(task["events finished (cumulative)"], "events finished")
    assert any(label.startswith("expected end") for label in task["events finished (cumulative)"]["labels"])
    workers = task["workers: queued → running → ended"]
    check(workers, "workers")
    assert any(re.fullmatch(r"w\d+ q ×1n", label) for label in workers["labels"]), workers["labels"]
    assert browser.find_elements(By.CSS_SELECTOR, "rect.seg.running")

    panda_id = task_status()["jobs"][0]["panda_id"]
    job = visit(f"/monitor/job/{panda_id}", "job")
    check(job["node, start and end (workers and the job)"], "node, start and end")
    busy = [c for title, c in job.items() if title.endswith("busy fraction per rank")]
    assert busy, sorted(job)
    check(busy[0], busy[0]["title"])
    assert {"rank 0", "rank 1"} <= set(busy[0]["labels"]) or busy[0]["bars"] >= 1

    sites = visit("/monitor/sites", "sites")
    check(sites["queue wait (submitted → started) per queue: workers"], "queue wait")
    assert browser.find_element(By.CSS_SELECTOR, "table.waits tbody tr td").text == "q"

    browser.get(f"{url}/monitor/")
    browser.find_element(By.LINK_TEXT, "API docs").click()
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 10, 30, "the API docs' operations")
    shots.append(tmp_path / f"{len(shots) + 1:02d}-docs.png")
    browser.save_screenshot(str(shots[-1]))

    assert task_status()["status"] == "running"  # the report is taken while the task runs
    report = tmp_path / "report.html"
    site["cli"]("report", "--task", str(task_id), "--out", str(report))
    html = report.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I) and "<script" not in html
    browser.set_window_size(1280, 2400)
    rep = visit(report.as_uri(), "report")
    for title in (
        "events finished (cumulative)",
        "workers: queued → running → ended",
        "running workers per queue, all tasks (since this one began)",
        "queue wait (submitted → started) per queue: workers",
    ):
        check(rep[title], title.split(" (")[0])
    text = browser.find_element(By.TAG_NAME, "main").text
    assert f"task {task_id}: webtask" in text and "failures by error" in text and "per queue" in text

    final = wait_for(lambda: (t := task_status())["status"] in ("finished", "failed") and t, 180, "the task to end")
    assert final["status"] == "finished"
    browser.set_window_size(1280, 1000)
    # the task counts as finished once its last range is; its pilots end (and their workers with them) a moment
    # later: the page shows the finished colour once every worker has ended
    wait_for(lambda: workers_ended(work), 120, "every worker to end after the task")
    ended = visit(f"/monitor/job/{panda_id}", "job-finished")
    line = ended["node, start and end (workers and the job)"]
    check(line, "node, start and end")
    host = socket.gethostname()[:20]  # the local workers' ranks ran here: their job reports name this node
    assert any(host in label for label in line["labels"]), line["labels"]
    assert browser.find_elements(By.CSS_SELECTOR, "rect.seg.running[fill='#2ca02c']")  # ended: finished colour
    print("screenshots:", *shots, sep="\n  ")
