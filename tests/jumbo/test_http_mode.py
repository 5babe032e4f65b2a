"""HTTP mode: the pilot takes ranges straight from a central service's /api/v1 and reports back to it.

The server here is a tiny real http.server implementing the two documented endpoints and their envelope
{"success", "message", "data"} with a Bearer token check.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jumbo import protocol

pytestmark = pytest.mark.mpi
TOKEN = "s3cret-token"


class Central:
    def __init__(self, ranges: dict[int, list[dict]]):
        self.remaining = {pid: list(r) for pid, r in ranges.items()}
        self.reports: list[dict] = []
        self.denied = 0
        self.lock = threading.Lock()
        central = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    central.denied += 1
                    return self._answer(403, {"success": False, "message": "token refused", "data": None})
                with central.lock:
                    if self.path == "/api/v1/event/acquire_event_ranges":
                        lst = central.remaining.get(int(body["job_id"]), [])
                        data, central.remaining[int(body["job_id"])] = lst[: body["n_ranges"]], lst[body["n_ranges"] :]
                    elif self.path == "/api/v1/event/update_event_ranges":
                        assert body["version"] == 0
                        central.reports.extend(json.loads(body["event_ranges"]))
                        data = {"Returns": [True], "Command": None}
                    else:
                        return self._answer(404, {"success": False, "message": "no such method", "data": None})
                self._answer(200, {"success": True, "message": "", "data": data})

            def _answer(self, code, obj):
                raw = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-central", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_http_mode_exactly_once(mpi, ap, h, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    feed = {1001: h.make_ranges(77, 1001, 16, 5), 1002: h.make_ranges(78, 1002, 6, 5)}
    with Central(feed) as central:
        h.write_spec(
            ap,
            [h.sim_job(), h.sim_job(panda_id=1002, task_id=78)],
            mode="http",
            central_url=central.url,
            token_file=str(token),
            n_ranges=3,
        )
        pilot = h.PilotRun(ap, 2)
        assert pilot.wait() == 0, pilot.output()
    ids = Counter(r["eventRangeID"] for r in central.reports)
    assert set(ids) == {r["eventRangeID"] for lst in feed.values() for r in lst} and set(ids.values()) == {1}
    assert {r["eventStatus"] for r in central.reports} == {"finished"} and central.denied == 0
    assert not list(ap.glob("worker_requestevents.*")) and not list(ap.glob("event_status.*"))
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["jobs"]["1001"]["nEventsFinished"] == 80 and attrs["jobs"]["1002"]["nEventsFinished"] == 30
    for pid, task in ((1001, 77), (1002, 78)):
        files = protocol.read_json(attrs["jobs"][str(pid)]["manifest"])["files"]
        assert len(files) == len(feed[pid]), (pid, files)  # one output file per range
        h.check_finished(files, task)


def test_http_mode_wrong_token_gets_no_work(mpi, ap, h, tmp_path):
    token = tmp_path / "token"
    token.write_text("wrong")
    with Central({1001: h.make_ranges(77, 1001, 4, 5)}) as central:
        h.write_spec(ap, [h.sim_job()], mode="http", central_url=central.url, token_file=str(token))
        pilot = h.PilotRun(ap, 1, args=("--end-time", "+3"))
        assert pilot.wait() == 0, pilot.output()
    assert central.denied >= 2 and not central.reports  # it kept trying, never ran anything
    assert "HTTP 403, central service said: token refused" in pilot.output()
    attrs = protocol.read_worker_attributes(ap)
    assert attrs["jobs"]["1001"]["nRangesFinished"] == 0 and any("token refused" in e for e in attrs["errors"])
