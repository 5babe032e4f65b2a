"""Hostile request bodies against a central service running as its own process (`harvester-edge central serve`).

Its RSS is measured with psutil on that process: a gzip bomb, oversized and chunked bodies, a 100 MB body without
a token, nesting depth and stored string caps. Each answer must come back without the service reading what it
was not asked to read.
"""

from __future__ import annotations

import functools
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_plus

import psutil
import pytest
import requests
import yaml

from central.conftest import db_rows, module_backend, new_central_db

MiB = 1024 * 1024
MAX_BODY = 16 * MiB  # the default of central.max_body
HOT, V1, LEGACY = (
    "/api/v1/event/update_event_ranges",
    "/api/v1/harvester/update_workers",
    "/server/panda/updateEventRanges",
)


class Served:
    """`harvester-edge --config central.yaml central serve` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, work: Path, trusted: bool, backend: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.work = work
        self.db = new_central_db(backend, work)  # the default place of the SQLite file, or a PostgreSQL database
        db = {"db": self.db} if isinstance(self.db, str) else {}
        self.config = work / "central.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "site": "bodies",
                    "queues": [{"name": "unused", "batch": "local"}],
                    "paths": {"work_dir": str(work)},
                    "central": {"mode": "embedded", "host": "127.0.0.1", "port": self.port, "trusted": trusted, **db},
                }
            )
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(work / "serve.out", "ab")
        self.proc = subprocess.Popen(self.cli("central", "serve"), stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url + "/api/v1/system/is_alive", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "harvester_edge", "--config", str(self.config), *args]

    def token(self, name: str, scope: str) -> str:
        out = subprocess.run(
            self.cli("central", "issue-token", name, "--scope", scope, "--json"),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return json.loads(out.stdout)["token"]

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def output(self) -> str:
        return (self.work / "serve.out").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.fixture(scope="module")
def trusted(tmp_path_factory, module_backend):
    served = Served(tmp_path_factory.mktemp("trusted"), trusted=True, backend=module_backend)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def token_mode(tmp_path_factory, module_backend):
    served = Served(tmp_path_factory.mktemp("token"), trusted=False, backend=module_backend)
    yield served
    served.stop()


# an answer within this many seconds was not waiting for the body (the service would wait body_timeout, 60 s, and
# raw_request gives up after 5 s); a loaded 2-core machine can take a second for any answer, so not tighter
PROMPT = 3.0


def raw_request(port: int, head: str, body: bytes = b"", wait: float = 5.0) -> tuple[int, bytes, float]:
    """Send the head (and what body we choose: maybe less than announced), return (status, answer, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        start = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - start
        head_end = answer.find(b"\r\n\r\n")
        length = int(
            next(
                (
                    line.split(b":")[1]
                    for line in answer[:head_end].split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                b"0",
            )
        )
        while len(answer) < head_end + 4 + length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12]), unquote_plus(answer[head_end + 4 :].decode()).encode(), took


def head(path: str, length: int | None, **headers: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=1)
def bomb() -> bytes:
    """1 GiB of zeros, gzip: about 1 MB."""
    comp, zeros, parts = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS), bytes(MiB), []
    for _ in range(1024):
        parts.append(comp.compress(zeros))
    parts.append(comp.flush())
    return b"".join(parts)


class PeakRss:
    """The largest RSS of a process while the block runs (sampled every 2 ms on a thread)."""

    def __init__(self, served: Served) -> None:
        self.served, self.peak, self._stop = served, 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.before = self.served.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.served.rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.served.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.before


@pytest.mark.parametrize(
    "path,encoding",
    [(HOT, "gzip"), (V1, "gzip"), (LEGACY, "gzip"), (LEGACY, None)],
    ids=["fastpath-header", "v1-header", "legacy-header", "legacy-magic"],
)
def test_gzip_bomb_is_inflated_in_a_stream_and_refused(trusted, path, encoding):
    body = bomb()
    assert len(body) < 1.1 * MiB
    extra = {"Content_Encoding": encoding} if encoding else {}
    raw_request(trusted.port, head("/api/v1/harvester/heartbeat", 2), b"{}")  # warm up: imports, first answers
    with PeakRss(trusted) as rss:
        status, answer, took = raw_request(trusted.port, head(path, len(body), **extra), body)
    print(
        f"bomb {path} {encoding or 'magic'}: {status} in {took:.3f}s, RSS {rss.before / MiB:.1f} MiB "
        f"+{rss.growth / MiB:.1f} MiB"
    )
    assert status == 413, answer[:300]
    assert b"inflates to more than" in answer
    assert took < PROMPT
    assert rss.growth < 50 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"


def test_gzip_bomb_without_token_is_refused_before_inflating(token_mode):
    body = bomb()
    with PeakRss(token_mode) as rss:
        for path in (HOT, V1, LEGACY):
            status, answer, took = raw_request(token_mode.port, head(path, len(body), Content_Encoding="gzip"), body)
            assert (status, took < PROMPT) == (403, True), (path, answer[:200])
    assert rss.growth < 50 * MiB


@pytest.mark.parametrize("path", [HOT, V1, LEGACY, "/monitor/errors/1/promote", "/api/v1/nothing/here"])
def test_declared_length_over_the_cap_is_413_before_reading(trusted, path):
    # announce MAX_BODY + 1 bytes and send none: an answer proves the service did not wait for the body
    status, answer, took = raw_request(trusted.port, head(path, MAX_BODY + 1))
    assert status == 413, answer[:300]
    assert b"larger than the limit" in answer and took < PROMPT
    if path.startswith("/api/v1/"):
        assert json.loads(answer)["success"] is False


@pytest.mark.parametrize("path", [HOT, V1, LEGACY])
def test_chunked_body_is_counted_and_cut_at_the_cap(trusted, path):
    chunk = b"x" * MiB
    wire = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17)) + b"0\r\n\r\n"
    with PeakRss(trusted) as rss:
        status, answer, took = raw_request(trusted.port, head(path, None, Transfer_Encoding="chunked"), wire)
    assert status == 413 and b"larger than the limit" in answer, answer[:300]
    assert rss.growth < 50 * MiB


@pytest.mark.parametrize("path", [HOT, V1, LEGACY])
def test_token_is_checked_before_the_body_is_read(token_mode, path):
    """100 MB announced, not a byte of it sent: the 403 comes back at once, the body was never waited for."""
    status, answer, took = raw_request(token_mode.port, head(path, 100_000_000))
    assert status == 403, answer[:300]
    assert took < PROMPT
    # the same with a body that streams in slowly (chunked, one chunk so far)
    status, answer, took = raw_request(
        token_mode.port, head(path, None, Transfer_Encoding="chunked"), b"10\r\n" + b"[" * 16 + b"\r\n"
    )
    assert status == 403 and took < PROMPT, answer[:300]


def test_with_a_token_the_size_cap_still_holds(token_mode):
    token = token_mode.token("h1", "harvester")
    for path in (HOT, V1, LEGACY):
        status, answer, _ = raw_request(token_mode.port, head(path, MAX_BODY + 1, Authorization=f"Bearer {token}"))
        assert status == 413, (path, answer[:300])
    resp = requests.post(
        token_mode.url + V1,
        json={"harvester_id": "h1", "workers": [{"workerID": 1}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert resp.json()["success"] is True


def nested(depth: int) -> str:
    """JSON text of `depth` nested lists (as text: the json module itself cannot write 200,000 levels)."""
    return "[" * depth + "1" + "]" * depth


def test_json_nesting_depth_is_limited_in_both_dialects(trusted):
    post = lambda path, **kw: requests.post(trusted.url + path, timeout=10, **kw)
    json_headers = {"Content-Type": "application/json"}
    ok = post(
        "/api/v1/harvester/heartbeat",
        data='{"harvester_id": "h", "data": {"x": %s}}' % nested(30),
        headers=json_headers,
    )
    assert ok.json()["success"] is True, ok.text  # 32 levels: body, data, 30 lists
    for depth in (40, 5000, 200_000):
        body = '{"harvester_id": "h", "event_ranges": %s}' % nested(depth)
        for path in ("/api/v1/harvester/heartbeat", HOT):
            resp = post(path, data=body, headers=json_headers)
            assert resp.status_code == 200 and resp.json()["success"] is False, resp.text[:300]
            assert "nests deeper" in resp.json()["message"] or "depth limit" in resp.json()["message"]
        legacy = post(LEGACY, data={"eventRanges": nested(depth)})
        assert legacy.status_code == 200 and "StatusCode=50" in legacy.text, legacy.text[:300]
        legacy = post(LEGACY, data=gzip.compress(('{"eventRanges": %s}' % nested(depth)).encode()))
        assert legacy.status_code == 200 and "StatusCode=50" in legacy.text, legacy.text[:300]
    assert trusted.proc.poll() is None


def test_stored_strings_are_capped(trusted):
    post = lambda path, **kw: requests.post(trusted.url + path, timeout=10, **kw)
    long_name = "h" * 257
    resp = post("/api/v1/harvester/heartbeat", json={"harvester_id": long_name})
    assert resp.json()["success"] is False and "256" in resp.json()["message"]
    resp = post(V1, json={"harvester_id": "h", "workers": [{"workerID": "w" * 257}]})
    assert resp.json()["success"] is False and "256" in resp.json()["message"]
    resp = post(
        "/server/panda/updateWorkerPilotStatus", data={"harvesterID": long_name, "workerID": 1, "status": "started"}
    )
    assert "StatusCode=50" in resp.text and "256" in resp.text
    resp = post("/server/panda/getJob", data={"siteName": "S" * 300})
    assert "StatusCode=50" in resp.text
    resp = post("/api/v1/harvester/heartbeat", json={"harvester_id": "h", "data": {"blob": "x" * 70_000}})
    assert resp.json()["success"] is False and "limit" in resp.json()["message"]
    # diagnostics are truncated (as PanDA does), not refused: the pilot's final report must land
    task = post(
        "/api/v1/task/submit",
        json={
            "name": "diag",
            "events": 10,
            "events_per_range": 5,
            "seconds_per_event": 0.1,
            "payload": {"kind": "python", "callable": "m:f"},
        },
    )
    assert task.json()["success"] is True, task.text
    job = post("/api/v1/pilot/acquire_jobs", json={"site_name": "S", "n_jobs": 1}).json()["data"]["jobs"][0]
    resp = post(
        "/server/panda/updateJob",
        data={"jobId": job["PandaID"], "state": "failed", "pilotErrorCode": 1, "pilotErrorDiag": "d" * 10_000},
    )
    assert "StatusCode=0" in resp.text, resp.text
    resp = post(
        "/api/v1/pilot/update_job",
        json={"job_id": job["PandaID"], "job_status": "failed", "exe_error_diag": "e" * 10_000},
    )
    assert resp.status_code == 200 and "StatusCode" in resp.text
    longest = db_rows(trusted.db, "SELECT max(length(harvester_id)), max(length(worker_id)) FROM workers")[0]
    diag = db_rows(trusted.db, "SELECT pilot_error_diag FROM jobs WHERE panda_id=?", (job["PandaID"],))[0][0]
    assert all(n is None or n <= 256 for n in longest)
    assert diag == "d" * 500


def forty_mib() -> Iterator[bytes]:
    for _ in range(40):
        yield b"x" * MiB


@pytest.mark.parametrize("path", [HOT, V1, LEGACY])
@pytest.mark.parametrize("how", ["declared", "chunked"])
def test_a_client_that_sends_its_whole_body_first_reads_the_413(trusted, path, how):
    """requests (like curl and the pilot) sends the whole body before it reads: closing at once on 40 MiB would
    reset the connection under it and lose the answer; the service lets the rest in (bounded) and closes after."""
    data = b"x" * (40 * MiB) if how == "declared" else forty_mib()
    answer = requests.post(trusted.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413 and "larger than the limit" in unquote_plus(answer.text)  # legacy: form-encoded
    assert answer.headers["connection"] == "close"


@pytest.mark.parametrize("path", [HOT, V1, LEGACY])
def test_a_plain_socket_that_sends_40_mib_before_reading_gets_the_413_not_a_reset(trusted, path):
    """No client library to rescue the answer (urllib3 reads a response that came early): sendall, then recv."""
    wire = b"".join(b"%x\r\n%s\r\n" % (MiB, b"x" * MiB) for _ in range(40)) + b"0\r\n\r\n"
    status, answer, _took = raw_request(trusted.port, head(path, None, Transfer_Encoding="chunked"), wire, wait=30)
    assert status == 413 and b"larger than the limit" in unquote_plus(answer.decode()).encode()


@pytest.mark.parametrize("path", [HOT, V1, LEGACY])
def test_a_client_without_a_token_that_sends_its_whole_body_first_reads_the_403(token_mode, path):
    answer = requests.post(token_mode.url + path, data=forty_mib(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 403 and answer.headers["connection"] == "close"


def test_a_refusal_after_the_whole_body_keeps_the_connection(trusted):
    """Bad JSON read to its end: nothing is left unread, so the connection serves the next request."""
    with requests.Session() as session:
        bad = session.post(trusted.url + V1, data=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.json()["success"] is False and bad.headers.get("connection") != "close"
        assert session.get(trusted.url + "/api/v1/system/is_alive").ok
