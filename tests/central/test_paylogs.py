"""Payload logs in the central service over HTTP, both backends: upload (harvester scope, ownership per job,
de-duplicated by source and offset, bounded per job with a truncated mark, body cap) and list (filters, follow)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from harvester_edge.central import paylogs
from harvester_edge.central.ownership import TRUSTED
from harvester_edge.central.paylogs import LogFilter
from harvester_edge.central.store import paylogs as rows

from .conftest import start_central, task_dict


def post(url: str, path: str, body: object, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(url + path, json=body, headers=headers, timeout=10)


def listing(url: str, token: str, **params) -> dict:
    answer = requests.get(
        url + "/api/v1/logs/list", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def line(offset: int, job: int, rank: int, stream: str, msg: str, rid: str = "r-1") -> dict:
    return {"offset": offset, "job": job, "task": 1, "worker": 7, "rank": rank, "range": rid, "stream": stream,
            "time": 1000.0 + offset, "msg": msg}  # fmt: skip


def dispatched_job(central, token: str) -> tuple[int, int]:
    task_id = central.service.submit_task(task_dict())
    got = post(central.url, "/api/v1/pilot/acquire_jobs", {"site_name": "S", "n_jobs": 1}, token).json()
    return task_id, got["data"]["jobs"][0]["PandaID"]


def test_upload_dedup_filters_follow_and_ownership(tmp_path, central_db):
    central = start_central(tmp_path, central_db, trusted=False)
    try:
        auth, url = central.authority, central.url
        h1, h2 = auth.issue("h1", ["harvester"]), auth.issue("h2", ["harvester"])
        admin, pilot = auth.issue("op", ["admin"]), auth.issue("p", ["pilot"])
        task_id, job = dispatched_job(central, h1)
        batch = {
            "harvester_id": "h1",
            "source": "w7/payload.0.jsonl",
            "records": [
                line(0, job, 0, "stdout", "hello event 1"),
                line(100, job, 0, "stderr", "warning: odd event"),
                line(200, job, 1, "stdout", "hello event 2", "r-2"),
            ],
        }
        first = post(url, "/api/v1/logs/upload", batch, h1).json()
        assert first["data"] == {"stored": 3, "duplicate": 0, "dropped": 0, "refused": []}, first
        again = post(url, "/api/v1/logs/upload", batch, h1).json()  # a batch re-sent after a crash
        assert again["data"]["stored"] == 0 and again["data"]["duplicate"] == 3

        everything = listing(url, admin, task_id=task_id)
        assert [(r["job"], r["task"], r["worker"], r["rank"], r["range"], r["stream"], r["msg"]) for r in
                everything["lines"]] == [
            (job, task_id, 7, 0, "r-1", "stdout", "hello event 1"),
            (job, task_id, 7, 0, "r-1", "stderr", "warning: odd event"),
            (job, task_id, 7, 1, "r-2", "stdout", "hello event 2"),
        ]  # fmt: skip
        assert everything["truncated"] == []
        assert [r["msg"] for r in listing(url, admin, panda_id=job, rank=1)["lines"]] == ["hello event 2"]
        assert [r["msg"] for r in listing(url, admin, task_id=task_id, stream="stderr")["lines"]] == [
            "warning: odd event"
        ]
        assert [r["msg"] for r in listing(url, admin, task_id=task_id, grep="event 1")["lines"]] == ["hello event 1"]
        assert listing(url, admin, task_id=task_id + 1)["lines"] == []
        # a NUL (PostgreSQL's text holds none) is stored as U+FFFD on both backends, and found as such
        nul = {**batch, "source": "w7/payload.9.jsonl", "records": [line(0, job, 9, "stdout", "a\x00b")]}
        assert post(url, "/api/v1/logs/upload", nul, h1).json()["data"]["stored"] == 1
        assert [r["msg"] for r in listing(url, admin, task_id=task_id, rank=9)["lines"]] == ["a\ufffdb"]
        assert [r["rank"] for r in listing(url, admin, task_id=task_id, grep="a\x00b")["lines"]] == [9]
        # follow: only what came after the last id seen
        last = everything["last_id"]
        post(url, "/api/v1/logs/upload", {**batch, "records": [line(300, job, 1, "stdout", "later")]}, h1)
        follow = listing(url, admin, task_id=task_id, after=last, rank=1)
        assert [r["msg"] for r in follow["lines"]] == ["later"] and follow["last_id"] > last

        # another harvester's job: refused per job, nothing stored; a pilot token may not upload; nor read
        foreign = post(url, "/api/v1/logs/upload", {**batch, "harvester_id": "h2"}, h2).json()
        assert foreign["data"]["refused"] == [job] and foreign["data"]["stored"] == 0
        named = post(url, "/api/v1/logs/upload", batch, h2)  # naming h1 with h2's token
        assert named.status_code == 403
        unknown = post(url, "/api/v1/logs/upload", {**batch, "records": [line(0, 999999, 0, "stdout", "x")]}, h1)
        assert unknown.json()["data"]["refused"] == [999999]
        assert post(url, "/api/v1/logs/upload", batch, pilot).status_code == 403
        assert post(url, "/api/v1/logs/upload", batch, None).status_code == 403
        assert (
            requests.get(url + "/api/v1/logs/list", headers={"Authorization": f"Bearer {h1}"}, timeout=10).status_code
            == 403
        )
        assert len(listing(url, admin, task_id=task_id)["lines"]) == 5
        bad = post(
            url, "/api/v1/logs/upload", {**batch, "records": [{**line(0, job, 0, "stdout", "x"), "stream": "x"}]}, h1
        )
        assert bad.status_code == 422 or bad.json()["success"] is False
    finally:
        central.stop()


def test_a_job_log_stops_at_its_bound_with_a_truncated_mark(tmp_path, central_db):
    central = start_central(tmp_path, central_db, trusted=True, payload_log_max_mb=1000 / (1024 * 1024))
    try:
        url = central.url
        task_id = central.service.submit_task(task_dict())
        job = central.service.acquire_jobs("S", harvester_id="h1")[0]["PandaID"]
        records = [line(i * 200, job, 0, "stdout", f"{i:03d}" + "y" * 97) for i in range(25)]  # 100 bytes each
        answer = post(url, "/api/v1/logs/upload", {"harvester_id": "h1", "source": "w1/p", "records": records}, None)
        assert answer.json()["data"] == {"stored": 10, "duplicate": 0, "dropped": 15, "refused": []}
        got = listing(url, "", task_id=task_id)
        assert [r["msg"][:3] for r in got["lines"]] == [f"{i:03d}" for i in range(10)]  # the first ones, no gaps
        assert got["truncated"] == [{"job": job, "bytes": 1000, "lines": 10, "dropped": 15}]
        # a short line later is not stored either: the log ends where the bound was hit
        post(
            url,
            "/api/v1/logs/upload",
            {"harvester_id": "h1", "source": "w1/p", "records": [line(9000, job, 0, "stdout", "z")]},
            None,
        )
        assert len(listing(url, "", panda_id=job)["lines"]) == 10
        assert listing(url, "", panda_id=job)["truncated"][0]["dropped"] == 16
    finally:
        central.stop()


def test_an_upload_over_the_body_cap_is_refused(tmp_path, central_db):
    central = start_central(tmp_path, central_db, trusted=True, max_body=64 * 1024)
    try:
        central.service.submit_task(task_dict())
        job = central.service.acquire_jobs("S", harvester_id="h1")[0]["PandaID"]
        records = [line(i, job, 0, "stdout", "x" * 1000) for i in range(100)]
        answer = post(
            central.url, "/api/v1/logs/upload", {"harvester_id": "h1", "source": "w", "records": records}, None
        )
        assert answer.status_code == 413
        assert central.service.payload_logs(LogFilter(panda_id=job))["lines"] == []
    finally:
        central.stop()


def test_the_logs_command_over_a_remote_service(tmp_path, trusted_central):
    """`harvester-edge logs` with central.mode remote: /api/v1/logs/list with the filters, the truncation said."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from harvester_edge.central.logs_cli import logs_command

    from .conftest import db_settings

    svc = trusted_central.service
    task_id = svc.submit_task(task_dict())
    job = svc.acquire_jobs("S", harvester_id="h1")[0]["PandaID"]
    records = [line(0, job, 0, "stdout", "one"), line(50, job, 1, "stderr", "two"), line(99, job, 1, "stdout", "3")]
    svc.upload_payload_logs("h1", "w1/p", records)
    central = db_settings(tmp_path / "unused.db", tmp_path, mode="remote", url=trusted_central.url)
    o = SimpleNamespace(config=SimpleNamespace(central=central, paths=SimpleNamespace(work_dir=tmp_path)))
    out = CliRunner().invoke(logs_command, ["--task", str(task_id), "--rank", "1"], obj=o, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert [line.split(" | ")[1] for line in out.output.splitlines()] == ["two", "3"]
    assert f"job {job} rank 1 r-1 stderr | two" in out.output
    out = CliRunner().invoke(logs_command, ["--task", str(task_id), "--grep", "on", "--json"], obj=o)
    assert [json.loads(x)["msg"] for x in out.output.splitlines()] == ["one"]


class Tracing:
    """The writer's connection, counting the statements a batch costs; `sneak`: a line another writer stores just
    before the batch's first INSERT (a PostgreSQL service of N processes), between the read of what is stored and
    the write."""

    def __init__(self, conn: Any, sneak: tuple | None = None) -> None:
        self.conn, self.sneak, self.statements = conn, sneak, 0

    def execute(self, sql: str, params: Any = ()) -> Any:
        self.statements += 1
        if self.sneak is not None and sql.startswith("INSERT INTO payload_logs"):
            sneak, self.sneak = self.sneak, None
            self.conn.execute(f"INSERT INTO payload_logs ({rows.COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", sneak)
        return self.conn.execute(sql, params)


def stored_through(svc, records: list[dict], cap: int, sneak: tuple | None = None) -> tuple[dict, int]:
    """paylogs.store of one batch (source w1/p of h1) in the service's writer: its answer and statement count."""

    def run(conn: Any) -> tuple[dict, int]:
        traced = Tracing(conn, sneak)
        return paylogs.store(traced, "h1", "w1/p", records, cap, TRUSTED), traced.statements

    return svc.db.write(run)


def test_a_batch_takes_a_few_statements_and_keeps_once_bound_and_totals_exact(service):
    """Thousands of lines in a handful of multi-row statements (the old store: one INSERT a line), across the
    chunk edges (512 rows): each line once (in the batch, re-sent, or stored meanwhile by another writer), the
    bound exact at a line past a chunk edge with its totals row, NUL -> U+FFFD."""
    service.submit_task(task_dict(jobs=3, events=30))
    a, b, c = [j["PandaID"] for j in service.acquire_jobs("S", n_jobs=3, harvester_id="h1")]
    records = [line(i * 10, a, 0, "stdout", f"{i:09d}") for i in range(1300)]  # 9 bytes each
    records.insert(200, line(1000, a, 0, "stdout", "again"))  # offset 1000 (line 100) twice in one batch
    answer, statements = stored_through(service, records, cap=1030 * 9)
    assert answer == {"stored": 1030, "duplicate": 1, "dropped": 270, "refused": []}
    assert statements <= 12, statements
    got = service.payload_logs(LogFilter(panda_id=a, limit=5000))
    assert [r["msg"] for r in got["lines"]] == [f"{i:09d}" for i in range(1030)]  # in order, no gaps
    assert got["truncated"] == [{"job": a, "bytes": 1030 * 9, "lines": 1030, "dropped": 270}]

    first = [line(10**6 + i, b, 1, "stderr", "a\x00b" if i == 600 else "x" * 8) for i in range(1100)]
    assert stored_through(service, first, cap=10**6)[0]["stored"] == 1100
    again, statements = stored_through(service, first + [line(2 * 10**6 + i, b, 1, "stdout", "y") for i in range(50)],
                                       cap=10**6)  # fmt: skip
    assert again == {"stored": 50, "duplicate": 1100, "dropped": 0, "refused": []} and statements <= 12
    assert service.payload_logs(LogFilter(panda_id=b, grep="a\ufffdb"))["lines"][0]["msg"] == "a\ufffdb"
    assert rows.totals(service.db.reader(), [b]) == {b: (1099 * 8 + 5 + 50, 1150, 0, 0)}

    lines_c = [line(3 * 10**6 + i, c, 2, "stdout", "z" * 4) for i in range(700)]
    sneak = (c, 1, "h1", 7, 2, "r-1", "stdout", 1.0, "zzzz", "w1/p", 3 * 10**6 + 513)
    answer, _ = stored_through(service, lines_c, cap=10**6, sneak=sneak)
    assert answer == {"stored": 699, "duplicate": 1, "dropped": 0, "refused": []}
    assert rows.totals(service.db.reader(), [c]) == {c: (699 * 4, 699, 0, 0)}  # the other writer's line: its own
    assert len(service.payload_logs(LogFilter(panda_id=c, limit=5000))["lines"]) == 700


def test_one_log_filter_is_validated_once_and_gives_the_list_query():
    """The filter that travels from the route / page / CLI to the SQL: out-of-range values are refused where it is
    made, and the remote CLI sends the same query parameters as before (no `newest`: logs/list has none)."""
    from harvester_edge.central.errors import InvalidInput

    for bad in ({"stream": "x"}, {"limit": 0}, {"limit": 10_001}, {"rank": -1}, {"after": True}, {"grep": "g" * 257}):
        with pytest.raises(InvalidInput):
            LogFilter(**bad)
    flt = LogFilter(task_id=3, rank=1, grep="on", after=7, limit=100, newest=True)
    assert flt.query() == {"task_id": 3, "rank": 1, "grep": "on", "after": 7, "limit": 100}
