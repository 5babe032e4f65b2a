"""The trace format: gzip transparency, path markers, secrets never written, clear errors on bad traces."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harvester_edge.replay import trace
from harvester_edge.replay.recorder import RecordingTransport, TraceWriter
from harvester_edge.replay.replayer import replay
from harvester_edge.seams.http import HttpTransport


def lines_of(path: Path) -> list[str]:
    return trace.open_text(path, "r").read().splitlines()


def test_gzip_is_transparent_and_equal(record_synthetic):
    plain = record_synthetic(name="a.jsonl")
    packed = record_synthetic(name="a.jsonl.gz")
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and plain.read_bytes()[:1] == b"{"
    head_a, recs_a = trace.read_trace(plain)
    head_b, recs_b = trace.read_trace(packed)

    def key(r):  # the install id (in job names) is random per database: compare what was asked and when
        return r["kind"], r.get("t"), r.get("argv"), r.get("path"), r.get("op"), r.get("returncode")

    assert [key(r) for r in recs_a] == [key(r) for r in recs_b]
    assert {r["kind"] for r in recs_a} == {"cycle", "command", "http", "file"}
    assert replay(packed).ok


def test_paths_are_written_with_markers(record_synthetic):
    path = record_synthetic()
    head, records = trace.read_trace(path)
    body = path.read_text()
    assert body.count(head["work_dir"]) == 1  # the header says where it was recorded; records use @WORK@
    bsub = next(r for r in records if r["kind"] == "command" and r["argv"] == ["bsub"])
    assert "#BSUB -cwd @WORK@/workers/w000001" in bsub["stdin"] and "@PYTHON@ -m jumbo" in bsub["stdin"]
    assert trace.denormalize(trace.normalize("/x/y/z", "/x"), "/x") == "/x/y/z"


class _Creds(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"success": True, "data": "eyJSECRET-TOKEN"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_secrets_never_reach_the_trace(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Creds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path / "t.jsonl"
    writer = TraceWriter(path, trace.header("s", 0.0, str(tmp_path), "abc", {}))
    try:
        transport = RecordingTransport(HttpTransport(f"http://127.0.0.1:{server.server_port}"), writer)
        transport.request(
            "GET",
            "/api/v1/creds/get_access_token",
            params={"client_name": "site", "token_key": "KEY-SECRET"},
            headers={"Authorization": "Bearer BEARER-SECRET"},
        )
        transport.close()
    finally:
        server.shutdown()
        writer.close()
    text = path.read_text()
    assert "get_access_token" in text
    for secret in ("KEY-SECRET", "BEARER-SECRET", "eyJSECRET-TOKEN"):
        assert secret not in text


def write_lines(path: Path, lines: list[str], final_newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""))
    return path


def test_truncated_line_names_the_line(record_synthetic, tmp_path):
    lines = lines_of(record_synthetic())
    bad = write_lines(tmp_path / "cut.jsonl", lines[:40] + [lines[40][: len(lines[40]) // 2]], final_newline=False)
    with pytest.raises(trace.TraceError, match=r"cut\.jsonl:41: the last line is cut short"):
        replay(bad)
    middle = write_lines(tmp_path / "mid.jsonl", lines[:10] + ['{"kind": "command", '] + lines[10:])
    with pytest.raises(trace.TraceError, match=r"mid\.jsonl:11: not valid JSON"):
        trace.read_trace(middle)


def test_truncated_gzip_is_a_clear_error(record_synthetic, tmp_path):
    data = record_synthetic(name="t.jsonl.gz").read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(trace.TraceError, match="truncated or corrupt"):
        trace.read_trace(cut)


def test_unknown_version(record_synthetic, tmp_path):
    lines = lines_of(record_synthetic())
    head = json.loads(lines[0])
    head["version"] = 99
    bad = write_lines(tmp_path / "v99.jsonl", [json.dumps(head)] + lines[1:])
    with pytest.raises(trace.TraceError, match=r"v99\.jsonl:1: trace format version 99 is not supported"):
        replay(bad)
    with pytest.raises(trace.TraceError, match=r"empty\.jsonl:1: empty trace"):
        trace.read_trace(write_lines(tmp_path / "empty.jsonl", []))
    with pytest.raises(trace.TraceError, match="not a harvester-edge trace"):
        trace.read_trace(write_lines(tmp_path / "other.jsonl", ['{"hello": 1}']))


def test_call_without_recorded_answer_names_line_and_call(record_synthetic, tmp_path):
    lines = lines_of(record_synthetic())
    index = next(i for i, line in enumerate(lines) if '"kind":"command"' in line and "squeue" not in line)
    rec = json.loads(lines[index])
    del rec["returncode"]
    bad = write_lines(tmp_path / "noanswer.jsonl", lines[:index] + [json.dumps(rec)] + lines[index + 1 :])
    with pytest.raises(trace.TraceError) as err:
        replay(bad)
    message = str(err.value)
    assert f"noanswer.jsonl:{index + 1}:" in message and "has no recorded answer" in message
    assert rec["argv"][0] in message, (rec["argv"], message)  # the call whose answer is missing
    http = next(i for i, line in enumerate(lines) if '"kind":"http"' in line)
    rec = json.loads(lines[http])
    rec.pop("status"), rec.pop("error", None)
    bad = write_lines(tmp_path / "nohttp.jsonl", lines[:http] + [json.dumps(rec)] + lines[http + 1 :])
    with pytest.raises(trace.TraceError, match=rf"nohttp\.jsonl:{http + 1}: http record 'POST /api/v1/"):
        trace.read_trace(bad)


def test_unknown_record_kind(record_synthetic, tmp_path):
    lines = lines_of(record_synthetic())
    bad = write_lines(tmp_path / "kind.jsonl", lines[:5] + ['{"kind": "telepathy", "seq": 0}'] + lines[5:])
    with pytest.raises(trace.TraceError, match=r"kind\.jsonl:6: unknown record kind 'telepathy'"):
        trace.read_trace(bad)


def test_gzip_writer_by_suffix(tmp_path):
    writer = TraceWriter(tmp_path / "x.jsonl.gz", trace.header("s", 1.0, "/w", "i", {}))
    writer.write({"kind": "cycle", "agent": "fetcher", "t": 2.0}, starts_cycle=True)
    writer.close()
    with gzip.open(tmp_path / "x.jsonl.gz", "rt") as fh:
        assert len(fh.read().splitlines()) == 2
