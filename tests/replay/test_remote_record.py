"""A recorded remote-mode run: the real agents (virtual time, synthetic LSF site) against a central service that
answers exactly as the real PanDA server does -- its own api/v1 code and request validation behind a loopback
HTTP server, the database layer a small fake (tests/contract/panda_app.py) -- then replayed strictly.

That run holds what only a real server does: jobs without our extensions (a command payload from transformation +
jobPars, a jobsetID of their own), "No jobs in PanDA" as success=false, event ranges counted with job_id +
jobset_id + task_id, update_event_ranges answering HTTP 500 after writing (the outbox must not stall), and
update_jobs_bulk answered one envelope per job.

Set REPLAY_SAVE_TRACE=<path> to keep the trace (tests/replay/traces/remote.jsonl.gz was made that way).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from contract.harness import ORIGIN, TOKEN, start_panda_server
from harvester_edge.central.client import CentralClient
from harvester_edge.replay import trace
from harvester_edge.replay.replayer import replay
from harvester_edge.replay.sim import Simulation, site_config
from harvester_edge.replay.synthetic import Behaviour
from harvester_edge.seams.http import HttpTransport


def record_remote(root: Path, path: Path, **env: str) -> list[dict]:
    (root / "server").mkdir(parents=True)
    server = start_panda_server(
        root / "server", env_extra={"PANDA_CONTRACT_RANGES": "24", "PANDA_CONTRACT_JOBS": "1", **env}
    )
    try:
        work = root / "site"
        config = site_config(work, batch="lsf", max_running=2, max_queued=1)
        token_file = root / "token"
        token_file.write_text(TOKEN)
        config = config.model_copy(
            update={
                "central": config.central.model_copy(
                    update={
                        # the token comes from the token file (renewed outside, as on real sites): no key flow by the agent
                        "mode": "remote",
                        "url": server.url,
                        "trusted": True,
                        "origin": ORIGIN,
                        "tokens": config.central.tokens.model_copy(update={"token_file": token_file}),
                    }
                )
            }
        )
        # the real HTTP transport to the real server's code, recorded by the same wrapper as the daemon's; the
        # site's client reads the token file and sends the Origin of the config (central.mode: remote)
        sim = Simulation(
            work,
            Behaviour(queue_wait=20, fail_rate=0.0, kill_rate=0.0, ranges=24, jobs=1, seed=5),
            config,
            record=path,
            transport=HttpTransport(server.url, timeout=30),
        )
        sim.run(max_virtual=1500)
        return server.calls()
    finally:
        server.proc.terminate()
        server.proc.wait(10)


def test_remote_run_against_the_real_server_code_records_and_replays(tmp_path):
    path = tmp_path / "remote.jsonl.gz"
    calls = record_remote(tmp_path, path)
    head, records = trace.read_trace(path)
    http = [r for r in records if r["kind"] == "http"]
    by_path: dict[str, list[dict]] = {}
    for r in http:
        by_path.setdefault(r["path"].split("/api/v1/")[-1], []).append(r)
    # the real server's answers, as recorded
    jobs = json.loads(by_path["pilot/acquire_jobs"][0]["body"])["data"]["jobs"]
    assert jobs[0]["jobsetID"] == 77 and "payload" not in jobs[0]
    assert any(json.loads(r["body"])["message"] == "No jobs in PanDA" for r in by_path["pilot/acquire_jobs"][1:])
    assert {r["json"]["jobset_id"] for r in by_path["event/acquire_event_ranges"]} == {77}
    assert all(r["status"] == 500 and "unhashable" in r["body"] for r in by_path["event/update_event_ranges"])
    counts = by_path["event/get_available_event_range_count"]
    assert counts and all(set(r["params"]) == {"job_id", "jobset_id", "task_id"} for r in counts)
    finals = [
        e for r in by_path["pilot/update_jobs_bulk"] for e in r["json"]["job_list"] if e["job_status"] == "finished"
    ]
    assert len(finals) == 1 and isinstance(finals[0]["end_time"], str)
    # the server's database saw every range written once per report (a 500 never stalled the outbox) and the end
    written = [
        rid
        for c in calls
        if c["method"] == "updateEventRanges"
        for rid in (r["eventRangeID"] for r in json.loads(c["args"][0]))
    ]
    assert sorted(set(written)) == sorted(written) and len(written) == 24
    assert [c["args"][1] for c in calls if c["method"] == "updateJobStatus" and c["args"][1] == "holding"]
    report = replay(path)
    assert report.ok, report.render()
    if os.environ.get("REPLAY_SAVE_TRACE"):
        shutil.copyfile(path, os.environ["REPLAY_SAVE_TRACE"])


def test_an_unknown_500_from_update_event_ranges_is_retried_three_times_then_let_go(tmp_path):
    """Not the known defect: the server fails (here: its database) and answers 500. Each range report is re-sent
    at most 3 times (one try per cycle), then counted as applied-or-given-up, so the outbox drains and the job
    still ends; an outage would have kept them (tests/agents)."""
    import sqlite3

    calls = record_remote(tmp_path, tmp_path / "failing.jsonl.gz", PANDA_CONTRACT_RANGES_FAIL="none")
    sent = [c for c in calls if c["method"] == "updateEventRanges"]
    ids = [r["eventRangeID"] for c in sent for r in json.loads(c["args"][0])]
    from collections import Counter

    assert Counter(Counter(ids).values()) == {3: 24}, Counter(ids)  # three tries each, no more
    with sqlite3.connect(tmp_path / "site" / "harvester.db") as db:
        rows = db.execute(
            "SELECT state, attempts, last_error FROM outbox WHERE kind = 'update_event_ranges'"
        ).fetchall()
    assert rows and all(
        state == "sent" and attempts == 3 and "3 HTTP 500 answers" in error for state, attempts, error in rows
    ), rows
    assert any(c["method"] == "updateJobStatus" and c["args"][1] == "holding" for c in calls)  # the job ended
