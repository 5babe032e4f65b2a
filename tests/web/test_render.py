"""Pure parts of the monitor: SVG charts, URL-driven tables, metrics helpers."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from harvester_edge.web import charts
from harvester_edge.web.tables import view


def test_line_chart_is_valid_svg_with_one_line_per_series_and_escaped_labels():
    svg = charts.line_chart(
        {"rank 0": [(10.0, 1.0), (20.0, 3.0)], "<b>&rank": [(10.0, 2.0), (15.0, 0.0)]}, "RSS <per> rank", "B"
    )
    root = ET.fromstring(svg)  # well-formed: every label escaped
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 2
    xs = [float(p.split(",")[0]) for p in lines[0].get("points").split()]
    assert xs[0] < xs[1]  # time runs left to right
    ys = [float(p.split(",")[1]) for p in lines[0].get("points").split()]
    assert ys[1] < ys[0]  # a larger value is drawn higher
    assert "<b>" not in svg and "&lt;b&gt;&amp;rank" in svg


def test_charts_without_data_say_so():
    assert "no samples yet" in charts.line_chart({}, "t") and "nothing yet" in charts.bar_chart([], "t")
    ET.fromstring(charts.bar_chart([("a", 0.0)], "zero"))


def test_monitor_series_sums_cpu_and_skips_bad_samples():
    samples = {
        1: [{"time": 5, "utime": 1.0, "stime": 0.5, "rss": 10}, {"time": 6, "rss": "x"}],
        0: [{"time": 5, "rss": 7}],
    }
    assert charts.monitor_series(samples, "cpu") == {"rank 0": [(5.0, 0.0)], "rank 1": [(5.0, 1.5), (6.0, 0.0)]}
    assert charts.monitor_series(samples, "rss") == {"rank 0": [(5.0, 7.0)], "rank 1": [(5.0, 10.0)]}
    assert list(charts.monitor_series(samples, "rss")) == ["rank 0", "rank 1"]


def test_human_units():
    assert charts.human(1536, "B") == "1.5KB" and charts.human(0.5) == "0.5" and charts.human(2_000_000) == "2M"


def test_table_view_filters_sorts_numbers_numerically_and_pages():
    rows = [{"id": i, "name": f"job-{i}", "state": "failed" if i % 3 == 0 else "ok"} for i in range(1, 121)]
    v = view("t", rows, ["id", "name", "state"], {"t.sort": "id", "t.desc": "1"}, page_size=50)
    assert [r["id"] for r in v.rows[:3]] == [120, 119, 118] and v.pages == 3 and v.page == 1
    v = view("t", rows, ["id", "name", "state"], {"t.q": "FAILED", "t.page": "2"}, "id", page_size=10)
    assert v.matched == 40 and v.total == 120 and v.page == 2 and v.rows[0]["id"] == 33
    assert view("t", rows, ["id"], {"t.page": "99"}, page_size=50).page == 3  # clamped
    assert view("t", rows, ["id"], {"t.sort": "nope"}, "id").sort == "id"  # unknown column ignored


def test_table_links_keep_other_tables_state():
    v = view("a", [{"x": 1}], ["x"], {"b.sort": "y", "a.q": "1"})
    link = v.sort_link("x")
    assert "b.sort=y" in link and "a.sort=x" in link and "a.desc=0" not in link and "a.page=1" in link
    assert "a.desc=1" in view("a", [{"x": 1}], ["x"], {"a.sort": "x"}).sort_link("x")


def test_route_labels_are_route_templates(tmp_path):
    from harvester_edge.central.service import CentralService
    from harvester_edge.central.settings import CentralSettings
    from harvester_edge.metrics import RouteLabels, route_templates
    from harvester_edge.server import central_app

    settings = CentralSettings(db=tmp_path / "central.db", trusted=True)
    svc = CentralService.open(tmp_path / "central.db", settings)
    try:
        label = RouteLabels(route_templates(central_app(settings, svc)))
    finally:
        svc.close()
    assert label("/monitor/job/123") == "/monitor/job/{panda_id}"
    assert label("/monitor/worker/7/file") == "/monitor/worker/{worker_id}/file"
    assert label("/docs") == "/docs" and label("/metrics") == "/metrics"
    assert label("/api/v1/event/acquire_event_ranges") == "/api/v1/event/acquire_event_ranges"
    assert label("/server/panda/getJob") == "/server/panda/getJob"
    assert label("/server/panda/isAlive") == "/server/panda/isAlive"
    assert label("/server/panda/m1234") == "/server/panda/<unknown>"
    assert label("/api/v1/x/y1234") == "<unmatched>"
    assert label("/random/../x") == "<unmatched>"


def test_a_started_service_built_its_route_labels_before_any_request(tmp_path):
    """Built from the OpenAPI document (~0.3 s of CPU): at start, not in the first request of each process."""
    from harvester_edge.central.server import EmbeddedCentral
    from harvester_edge.central.settings import CentralSettings
    from harvester_edge.metrics import HttpTiming

    central = EmbeddedCentral(
        CentralSettings(db=tmp_path / "central.db", files_dir=tmp_path, trusted=True, host="127.0.0.1", port=0)
    )
    central.start()
    try:
        timing = central._server.config.app
        assert isinstance(timing, HttpTiming) and timing._labels is not None
        assert timing.route_labels()("/api/v1/pilot/update_job") == "/api/v1/pilot/update_job"
    finally:
        central.stop()


def test_token_file_expiry_is_read_from_the_exp_claim(tmp_path):
    import jwt

    from harvester_edge.metrics import TokenFileCollector

    token = tmp_path / "token"
    token.write_text(jwt.encode({"exp": 1000 + 3600, "sub": "h"}, "k" * 32, algorithm="HS256") + "\n")
    (family,) = list(TokenFileCollector(token, clock=lambda: 1000.0).collect())
    assert family.name == "harvester_edge_token_expiry_seconds" and family.samples[0].value == 3600.0
    token.write_text("not a jwt")
    assert list(TokenFileCollector(token).collect()) == []
    assert list(TokenFileCollector(tmp_path / "missing").collect()) == []


def test_classification_prefers_the_longest_matching_confirmed_rule():
    from harvester_edge.web.data import classification

    rules = [
        {"id": 1, "source": "pilot", "code": 7, "diag_pattern": "", "class": "payload", "status": "confirmed"},
        {"id": 2, "source": "pilot", "code": 7, "diag_pattern": "stage-?in", "class": "system", "status": "confirmed"},
        {"id": 3, "source": "exe", "code": 1, "diag_pattern": "", "class": "user", "status": "suggested"},
    ]
    assert classification({"source": "pilot", "code": 7, "message": "stagein failed"}, rules) == "system"
    assert classification({"source": "pilot", "code": 7, "message": "segfault"}, rules) == "payload"
    assert classification({"source": "exe", "code": 1, "message": ""}, rules) == "user? (suggested #3)"
    assert classification({"source": "exe", "code": 2, "message": ""}, rules) == "unclassified"
