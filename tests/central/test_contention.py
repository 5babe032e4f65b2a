"""Contention on PostgreSQL: several service processes (tests/central/contender.py, each its own CentralService,
pool and writer) acquire jobs and ranges and report on the same task at the same moment; hypothesis draws what
each does. Checked from what every process was told and from the database afterwards:

- no range id is handed out twice (claims FOR UPDATE SKIP LOCKED never give one range to two jobs);
- a range is finished by at most one applied report, and a finished range has exactly one, from its holder;
- ranges in flight belong to live jobs; the status counts add up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.central.states import JOB_WATCHED

from .conftest import task_dict

PROCESSES = 3
N_RANGES = 30
CONTENDER = Path(__file__).with_name("contender.py")

op = st.one_of(
    st.tuples(st.just("acquire_jobs"), st.integers(1, 2)),
    st.tuples(st.just("acquire_ranges"), st.integers(0, 5), st.integers(1, 6)),
    st.tuples(st.just("acquire_ranges"), st.integers(0, 5), st.integers(1, 6)),
    st.tuples(
        st.just("report"), st.sampled_from(["finished", "finished", "failed"]), st.integers(0, 8), st.integers(1, 5)
    ),
    st.tuples(st.just("report"), st.just("finished"), st.just(0), st.integers(1, 6)),
    st.tuples(st.just("job"), st.integers(0, 5), st.sampled_from(["running", "running", "finished", "failed"])),
)


def key(range_id: str) -> tuple[int, int]:
    parts = range_id.split("-")
    return int(parts[0]), int(parts[3])


@pytest.fixture(scope="module")
def contenders():
    procs = [
        subprocess.Popen(
            [sys.executable, str(CONTENDER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        for _ in range(PROCESSES)
    ]
    yield procs
    for p in procs:
        p.stdin.close()
        p.wait(30)


# PostgreSQL only: row locks (SKIP LOCKED, NOWAIT) between service processes; SQLite has one writer process
def test_acquires_and_reports_from_several_processes_exactly_once(pg_cluster, contenders, tmp_path) -> None:
    totals = Counter()

    @settings(
        max_examples=int(os.environ.get("CONTENTION_EXAMPLES", "12")),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        jobs=st.integers(2, 6),
        attempts=st.integers(1, 3),
        plans=st.lists(st.lists(op, min_size=8, max_size=30), min_size=PROCESSES, max_size=PROCESSES),
    )
    def check(jobs: int, attempts: int, plans: list[list[tuple]]) -> None:
        url = pg_cluster.fresh_database()
        files = Path(tempfile.mkdtemp(dir=tmp_path))
        svc = CentralService.open(url, CentralSettings(db=url, files_dir=files))
        try:
            task = svc.submit_task(task_dict(events=N_RANGES * 2, events_per_range=2, jobs=jobs, max_attempts=attempts))
            panda_ids = [r[0] for r in svc.db.query("SELECT panda_id FROM jobs WHERE task_id=? ORDER BY 1", (task,))]
            # every process starts with some jobs of its own, then does what hypothesis drew, all at one moment
            start = time.time() + 0.3
            for proc, ops in zip(contenders, plans):
                plan = {"db": url, "dir": str(files), "task": task, "jobs": panda_ids, "start": start}
                plan["ops"] = [["acquire_jobs", 1], *map(list, ops)]
                proc.stdin.write(json.dumps(plan) + "\n")
            answers = [json.loads(proc.stdout.readline()) for proc in contenders]
            dispatched = [rid for a in answers for rid in a["dispatched"]]
            assert len(dispatched) == len(set(dispatched)), "a range id was handed out twice"
            finishes = Counter(key(rid) for a in answers for rid, status in a["applied"] if status == "finished")
            assert max(finishes.values(), default=0) <= 1, f"a range finished twice: {finishes.most_common(1)}"
            rows = {
                (task, r[0]): (r[1], r[2], r[3])
                for r in svc.db.query(
                    "SELECT process_id, status, panda_id, attempt_nr FROM ranges WHERE task_id=?", (task,)
                )
            }
            assert len(rows) == N_RANGES
            finished = {k for k, (status, _, _) in rows.items() if status == 3}
            assert finished == set(finishes), "finished ranges differ from the applied finish reports"
            for a in answers:
                for rid, status in a["applied"]:
                    if status == "finished":
                        _, holder, attempt = rows[key(rid)]
                        assert rid.endswith(f"-{holder}-1-{key(rid)[1]}-{attempt}"), f"{rid} applied, not the holder"
            live = {
                r[0]
                for r in svc.db.query(
                    f"SELECT panda_id FROM jobs WHERE status IN ({','.join('?' * len(JOB_WATCHED))})",
                    tuple(JOB_WATCHED),
                )
            }
            assert all(holder in live for status, holder, _ in rows.values() if status in (1, 2))
            if finished == set(rows):  # the last ranges may finish in two processes at once: still closed once
                assert svc.show_task(task)["status"] == "finished"
                totals["tasks finished"] += 1
            totals["dispatched"] += len(dispatched)
            totals["finished"] += len(finished)
            totals["busy"] += sum("busy" in e for a in answers for e in a["errors"])
            totals["processes dispatching"] += sum(bool(a["dispatched"]) for a in answers) > 1
        finally:
            svc.close()

    check()
    print("contention totals:", dict(totals))
    # the test exercised what it claims: ranges went to several processes in the same example, some finished
    assert totals["processes dispatching"] >= 1 and totals["finished"] > 0, totals
