"""Timelines (issue 19): every chart on the task, dashboard, job and sites pages has data points and labels, labels
are escaped, hostile pilot timings leave a gap instead of an error, the report is one self-contained file, and each
page renders within 200 ms with 10,000 workers in the DB (scripts/bench/monitor's fill)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harvester_edge.web import history, timecharts

from .conftest import get, start

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|<script[^>]*\bsrc\b|@import|url\(\s*["']?https?:""", re.I
)


def bench():
    loader = importlib.machinery.SourceFileLoader("bench_monitor", str(ROOT / "scripts" / "bench" / "monitor"))
    spec = importlib.util.spec_from_loader("bench_monitor", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def charts_of(html: str) -> dict[str, str]:
    """{aria-label: svg} of every chart in a page."""
    return {
        m.group(1): m.group(0) for m in re.finditer(r'<svg class="chart"[^>]*aria-label="([^"]*)".*?</svg>', html, re.S)
    }


def marks(svg: str) -> int:
    """Data points drawn: points of each series, bar segments, histogram bins and plain bars of non-zero height."""
    points = sum(int(n) for n in re.findall(r'class="series[^"]*" data-points="(\d+)"', svg))
    bars = len(re.findall(r'<rect class="(?:seg|bin)[^"]*"[^>]*height="(?!0\.0")', svg))
    plain = len(
        re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" height="(?!0\.0")[^"]+" fill="[^"]+"><title>', svg)
    )
    return points + bars + plain


def labels(svg: str) -> list[str]:
    return [t for t in re.findall(r"<text[^>]*>([^<]+)</text>", svg) if t.strip()]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    work = tmp_path_factory.mktemp("big")
    ids = bench().fill(work, workers=10_000)
    with sqlite3.connect(work / "central.db") as conn:  # a hostile node name reported for the job
        conn.execute("UPDATE jobs SET node=? WHERE panda_id=?", ("<img src=x onerror=alert(1)>", ids["panda_ids"][0]))
    central = start(work)
    yield central.url, ids, work
    central.stop()


@pytest.mark.parametrize(
    "page,expected",
    [
        ("/monitor/", ("running workers per queue (last 24 h)", "cores in use per queue (last 24 h)")),
        ("/monitor/task/{task_id}", ("events finished (cumulative)", "workers: queued → running → ended")),
        ("/monitor/job/{panda_id}", ("node, start and end (workers and the job)",)),
        ("/monitor/sites", ("queue wait (submitted → started) per queue: workers",)),
    ],
)
def test_every_timeline_has_points_and_labels(big, page, expected):
    url, ids, _ = big
    html = get(url + page.format(task_id=ids["task_id"], panda_id=ids["panda_ids"][0])).text
    found = charts_of(html)
    for title in expected:
        assert title in found, sorted(found)
        svg = found[title]
        assert marks(svg) > 3, f"{title}: no data points\n{svg[:2000]}"
        assert len(labels(svg)) >= 4, f"{title}: too few labels: {labels(svg)}"
        assert "no data yet" not in svg and "no workers yet" not in svg
    assert "<img src=x" not in html
    if "/job/" in page:  # the hostile node name reported for the job is shown, escaped
        assert "job on &lt;img src=x" in html


def test_busy_fraction_per_rank_from_the_pilots_timings(big):
    url, ids, work = big
    with sqlite3.connect(work / "harvester.db") as conn:
        worker = conn.execute(
            "SELECT w.id FROM workers w JOIN job_workers j ON j.worker_id = w.id WHERE j.panda_id=? "
            "AND w.id % 10 = 0 AND w.started_at IS NOT NULL ORDER BY w.id DESC LIMIT 1",
            (ids["panda_ids"][0],),
        ).fetchone()[0]
    html = get(f"{url}/monitor/job/{ids['panda_ids'][0]}").text
    svg = charts_of(html).get(f"worker {worker}: busy fraction per rank")
    assert svg and marks(svg) >= 1 and "rank 0" in svg and "100%" in svg


def test_hostile_timings_and_names_leave_gaps_not_errors(tmp_path):
    work = tmp_path / "w"
    ids = bench().fill(work, workers=50, ranges=200, jobs=2)
    with sqlite3.connect(work / "harvester.db") as conn:
        conn.execute("UPDATE event_ranges SET result=? WHERE rowid % 3 = 0", ('{"rank": "abc", "startTime": 1e308}',))
        conn.execute("UPDATE event_ranges SET result=? WHERE rowid % 3 = 1", ("not json",))
        conn.execute(
            "UPDATE event_ranges SET result=? WHERE rowid % 3 = 2",
            ('{"rank": 99999999999, "startTime": -5, "endTime": 1e300}',),
        )
        conn.execute("UPDATE workers SET started_at = 1e308, ended_at = -1 WHERE id % 7 = 0")
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute("UPDATE queues SET name='<b>q</b>' WHERE name='cpu'")
        conn.execute("UPDATE workers SET queue='<b>q</b>' WHERE queue='cpu'")
    central = start(work)
    try:
        for page in (
            "/monitor/",
            f"/monitor/task/{ids['task_id']}",
            f"/monitor/job/{ids['panda_ids'][0]}",
            "/monitor/sites",
        ):
            answer = get(central.url + page)
            assert answer.status_code == 200, (page, answer.text[:500])
            assert "<b>q</b>" not in answer.text
    finally:
        central.stop()


def test_charts_escape_labels_and_keep_their_size():
    hostile = '"><script>alert(1)</script>'
    svg = timecharts.time_chart({hostile: [(0, 1), (10, 2)]}, hostile, 0, 10, marks=[(5, hostile)])
    assert "<script>" not in svg and 'width="560" height="200"' in svg
    bars = timecharts.timeline_chart(
        [{"label": hostile, "queued": (0, 1), "running": (1, 5), "end": hostile, "tip": hostile}], hostile, 0, 10
    )
    assert "<script>" not in bars and bars.count('class="seg') == 2
    hist = timecharts.grouped_bars(["a", "b"], {hostile: [1, float("nan")]}, hostile)
    assert "<script>" not in hist and hist.count('class="bin"') == 2
    assert "no data yet" in timecharts.time_chart({}, "t", 0, 10)


def test_running_per_queue_counts_workers_and_cores():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE workers (queue, nodes, ranks_per_node, started_at, ended_at)")
    conn.executemany(
        "INSERT INTO workers VALUES (?, ?, ?, ?, ?)",
        [("a", 2, 4, 100.0, 200.0), ("a", 1, 4, 150.0, None), ("b", 1, 1, 0.0, 50.0)],
    )
    out = history.running_per_queue(conn, now=300.0, hours=1, samples=301)

    def at(series, t):
        return min(series, key=lambda p: abs(p[0] - t))[1]

    workers, cores = out["workers"]["a"], out["cores"]["a"]
    assert [at(workers, t) for t in (50, 120, 170, 250)] == [0, 1, 2, 1]
    assert [at(cores, t) for t in (50, 120, 170, 250)] == [0, 8, 12, 4]
    assert at(out["workers"]["b"], 20) == 1 and at(out["workers"]["b"], 60) == 0


def test_report_is_one_self_contained_file(tmp_path):
    work = tmp_path / "work"
    ids = bench().fill(work, workers=300, ranges=500, jobs=3)
    config = tmp_path / "site.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "site": "r",
                "central": {"mode": "embedded"},
                "paths": {"work_dir": str(work)},
                "queues": [{"name": "cpu", "batch": "local"}],
            }
        )
    )
    out = tmp_path / "report.html"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "harvester_edge",
            "--config",
            str(config),
            "report",
            "--task",
            str(ids["task_id"]),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    html = out.read_text()
    assert not EXTERNAL.search(html), EXTERNAL.search(html)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "<style>" in html
    found = charts_of(html)
    for title in (
        "events finished (cumulative)",
        "workers: queued → running → ended",
        "queue wait (submitted → started) per queue: workers",
    ):
        assert marks(found[title]) > 3 and labels(found[title]), title
    assert "payload crashed 0" in html and "node-hours" in html and "wait p50" in html
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "harvester_edge",
            "--config",
            str(config),
            "report",
            "--task",
            "999",
            "--out",
            str(tmp_path / "x.html"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "999" in missing.stderr and not (tmp_path / "x.html").exists()


def test_each_page_renders_with_10000_workers(tmp_path):
    """Every page builds and renders over a site of 10,000 workers. How fast is the benchmark's to say
    (scripts/bench/monitor prints each page's p50 and max against its 200 ms budget): a timed assertion here would
    fail on a loaded machine, not on slow code."""
    module = bench()
    ids = module.fill(tmp_path / "w", workers=10_000)
    times = module.measure(tmp_path / "w", ids, repeat=1)  # it checks each page rendered (more than 1,000 bytes)
    assert set(times) == {"dashboard", "task", "job", "sites", "worker", "errors"}


def test_benchmark_prints_a_table_and_a_json_line():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "monitor"), "--workers", "500", "--repeat", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(last["pages"]) >= {"dashboard", "task", "job", "sites"} and last["workers"] == 500


def test_worker_rows_name_the_nodes_of_the_job_report():
    from harvester_edge.web.history import report_nodes

    assert (
        report_nodes({"perRank": {"0": {"node": "nid001"}, "1": {"node": "nid002"}, "2": {"node": "nid001"}}})
        == "nid001,nid002"
    )
    assert report_nodes({"perRank": {"0": {"node": 5}, "1": "x"}}) is None and report_nodes(None) is None
    assert report_nodes({"perRank": {str(i): {"node": f"n{i}"} for i in range(9)}}) == "n0,n1,n2…"
