"""A hostile pilot writing into a RUNNING daemon's access point (issue 11, part 5: pilot files are untrusted input).

One real daemon (embedded central service on a loopback port, the local batch plugin, real jumbo pilots under
mpirun) runs a sleep task long enough that the planted files go in while its first worker runs. Into that worker's
access point the test plants, beside the real pilot's own files and under sequence numbers the real pilot never
reaches (900000+), every kind of hostile file: status files that are symbolic links to /etc/passwd and /dev/zero,
a hard link, a FIFO, a 200 MB (sparse) file, wrong types ("time": "abc", a string errorCode for a range this worker
really holds, a list where an object is expected), reports of ranges never dispatched to this worker, range
requests for 1,000,000 ranges and for another job, and a bad heartbeat; and for the monitor pages: *.out/*.err
files that are links to /etc/passwd or a FIFO, prmon files that are a FIFO or garbage, and a FIFO jobReport.json.

How the hostile writes race with the real pilot: the stream files have their own names (seq 900000+), so the real
pilot's files never collide with them; the monitor reads every second while the worker runs ~15 s, and the test
waits for the daemon's log line about each one. The hostile request is answered into JobsEventRanges.<seq>.json,
which the real pilot picks up and runs (its ranges are dispatched to this worker). The planted heartbeat races the
pilot's own rewrite (every 10 s): the test accepts either outcome for the heartbeat's .bad file but requires the log
line when it was read. jobReport.json is rewritten by the pilot when it ends, so the FIFO one is planted after every
worker ended (the monitor reads it when the page is asked for).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import requests

from agents.conftest import Site
from helpers import kill_local_workers, local_queue, sleep_task

pytestmark = pytest.mark.mpi

LOCAL_QUEUE = local_queue(None, walltime_min="2m", max_queued_workers=2)
EVENTS = 1600  # two jobs, each on its own worker of 2 ranks: ~20 s of sleeping per worker (margin for the attack on a loaded machine)
BIG = 200 * 1024 * 1024
MARK = "HOSTILE-PILOT-MARK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_body(seq: int, events: dict, **extra) -> bytes:
    return json.dumps({"protocol": 1, "seq": seq, "time": time.time(), "events": events, **extra}).encode()


def wait_for(what: str, check, timeout: float, site: Site):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if site.daemon is not None and site.daemon.poll() is not None:
            raise AssertionError(f"daemon exited with {site.daemon.returncode}: {site.log_tail()}")
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout}s: {what}\n{site.log_tail(60)}")


def two_running_workers(site: Site):
    """(worker A, its access point, its job, ranges dispatched to it, worker B's job, ranges dispatched to B) once
    both pilots have taken ranges."""
    try:
        return _two_running_workers(site)
    except sqlite3.OperationalError:  # the daemon has not made its database yet
        return None


def _two_running_workers(site: Site):
    with site.harvester_db() as conn:
        rows = conn.execute(
            "SELECT w.id, w.access_point, e.panda_id FROM workers w JOIN event_ranges e ON "
            "e.worker_id = w.id WHERE w.state = 'running' AND e.state = 'dispatched' GROUP BY w.id "
            "ORDER BY w.id"
        ).fetchall()
        if len(rows) < 2:
            return None
        (a, ap, pid), (b, _, other_pid) = rows[:2]
        held, others = (
            [
                r[0]
                for r in conn.execute(
                    "SELECT range_id FROM event_ranges WHERE worker_id = ? AND "
                    "state = 'dispatched' ORDER BY first_event",
                    (w,),
                )
            ]
            for w in (a, b)
        )
    ap = Path(ap)
    if not held or not others or not any(ap.glob("JobsEventRanges.*.json.read")):
        return None  # the pilot has not consumed its first answer yet
    return a, ap, pid, held, other_pid, others


def plant_daemon_files(ap: Path, panda_id: int, held: list[str], outside: Path) -> dict:
    """Files the daemon reads (status, request, heartbeat), each {name: what the log must say about it}."""
    planted: dict[str, str] = {}

    def status(seq: int) -> str:
        return f"event_status.{seq}.json"

    os.symlink("/etc/passwd", ap / status(900001))
    planted[status(900001)] = "symbolic link"
    os.symlink("/dev/zero", ap / status(900002))
    planted[status(900002)] = "symbolic link"
    (outside / "other.json").write_bytes(status_body(900003, {}))
    os.link(outside / "other.json", ap / status(900003))
    planted[status(900003)] = "2 hard links"
    os.mkfifo(ap / status(900004))
    planted[status(900004)] = "a FIFO, not a regular file"
    with open(ap / status(900005), "wb") as fh:
        fh.truncate(BIG)  # sparse: 200 MB of apparent size, no disk
    planted[status(900005)] = f"{BIG} bytes, over the cap"
    (ap / status(900006)).write_bytes(json.dumps({"protocol": 1, "seq": 900006, "time": "abc", "events": {}}).encode())
    planted[status(900006)] = "'time' must be a number, got str 'abc'"
    (ap / status(900007)).write_bytes(
        status_body(
            900007,
            {str(panda_id): [{"eventRangeID": held[0], "eventStatus": "failed", "errorCode": "42", "errorDiag": MARK}]},
        )
    )
    planted[status(900007)] = "'errorCode' must be an integer, got str"
    (ap / status(900008)).write_bytes(status_body(900008, {str(panda_id): {"eventRangeID": held[0]}}))
    planted[status(900008)] = "events of job %d must be a list, got dict" % panda_id
    (ap / "worker_requestevents.900010.json").write_bytes(
        json.dumps(
            {"protocol": 1, "seq": 900010, "requests": {str(panda_id): {"pandaID": panda_id, "nRanges": "many"}}}
        ).encode()
    )
    planted["worker_requestevents.900010.json"] = "'nRanges' must be an integer, got str"
    (ap / "worker_heartbeat.json").write_bytes(json.dumps({"protocol": 1, "time": "abc"}).encode())
    return planted


def plant_page_files(ap: Path, outside: Path) -> dict:
    """Files only the monitor pages read, {name: the reason the page must show}."""
    os.symlink("/etc/passwd", ap / "passwd.out")
    (outside / "secret.txt").write_text("SECRET-OF-THE-DAEMON-USER\n")
    os.link(outside / "secret.txt", ap / "secret.err")
    os.mkfifo(ap / "fifo.out")
    os.symlink("/dev/zero", ap / "prmon.7.jsonl")
    os.mkfifo(ap / "prmon.8.jsonl")
    (ap / "prmon.9.jsonl").write_text('{"time": "abc", "utime": "x", "rss": [1]}\n[1, 2]\nnot json\n')
    return {"passwd.out": "symbolic link", "secret.err": "2 hard links", "fifo.out": "a FIFO"}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, module_central_db):
    """The daemon after the attack: {site, url, worker, ap, panda_id, task_id, planted, page_files, foreign}."""
    root = tmp_path_factory.mktemp("hostile")
    db = module_central_db
    on_pg = {"db": db} if isinstance(db, str) else {}  # PostgreSQL; else the SQLite file in work_dir
    outside = root / "outside"
    outside.mkdir()
    port = free_port()
    site = Site(
        root / "site",
        queue=LOCAL_QUEUE,
        central={"mode": "embedded", "trusted": True, "port": port, **on_pg},
        daemon={"cleanup_delay": "1h"},
    )
    try:
        task_id = site.submit_task(**{**sleep_task(EVENTS, 0.05, per_range=10), "jobs": 2})
        site.start()
        worker, ap, panda_id, held, other_pid, others = wait_for(
            "two running workers holding ranges", lambda: two_running_workers(site), 120, site
        )
        foreign = others[:2] + ["bogus-range-of-nobody"]  # worker B's ranges, and one that does not exist
        planted = plant_daemon_files(ap, panda_id, held, outside)
        entries = [{"eventRangeID": rid, "eventStatus": "finished", "nEvents": 10, "path": MARK} for rid in foreign]
        entries.append({"eventRangeID": held[-1], "eventStatus": "finished", "nEvents": 10, "path": MARK})
        (ap / "event_status.900009.json").write_bytes(
            status_body(
                900009,
                {  # its own range under B's job
                    str(panda_id): entries[:-1],
                    str(other_pid): entries[-1:],
                },
            )
        )
        (ap / "worker_requestevents.900011.json").write_bytes(
            json.dumps(
                {
                    "protocol": 1,
                    "seq": 900011,
                    "requests": {
                        str(panda_id): {"pandaID": panda_id, "nRanges": 1_000_000},
                        str(other_pid): {"pandaID": other_pid, "nRanges": 5},
                    },
                }
            ).encode()
        )
        page_files = plant_page_files(ap, outside)
        url = f"http://127.0.0.1:{port}"
        during = requests.get(f"{url}/monitor/worker/{worker}", timeout=10)  # the worker still runs
        assert site.task(task_id)["status"] not in ("finished", "failed"), "the task ended before the attack"
        task = site.wait_task(task_id, timeout=240)
        site.wait_workers_ended()  # a pilot writes its jobReport.json when it ends, a moment after the task
        os.mkfifo(ap / "jobReport.json.fifo")
        os.replace(ap / "jobReport.json.fifo", ap / "jobReport.json")  # the pilot wrote its own at the end
        yield {
            "site": site,
            "url": url,
            "during": during,
            "worker": worker,
            "ap": ap,
            "panda_id": panda_id,
            "other_pid": other_pid,
            "task_id": task_id,
            "task": task,
            "planted": planted,
            "page_files": page_files,
            "foreign": foreign,
            "held": held,
        }
    finally:
        try:
            site.stop()
        finally:
            site.cleanup()
            kill_local_workers(site.work)


def log_text(site: Site) -> str:
    return (site.work / "logs" / "harvester-edge.log").read_text()


def test_task_finishes_with_every_range_exactly_once(attacked):
    site, task_id = attacked["site"], attacked["task_id"]
    assert attacked["task"]["status"] == "finished" and attacked["task"]["events_finished"] == EVENTS
    site.assert_exactly_once(task_id, EVENTS)
    for path, first, last in site.outputs():  # every finished range was run by the real pilot
        assert path.read_text() == f"{first} {last}\n"
    with site.harvester_db() as conn:
        marked = conn.execute("SELECT count(*) FROM event_ranges WHERE result LIKE ?", (f"%{MARK}%",)).fetchone()[0]
    with site.central_db() as conn:
        diag = conn.execute("SELECT count(*) FROM ranges WHERE error_diag LIKE ?", (f"%{MARK}%",)).fetchone()[0]
    assert marked == 0 and diag == 0  # nothing a hostile file said was accounted


def test_each_bad_file_is_moved_aside_with_a_log_line_naming_worker_and_file(attacked):
    ap, worker, text = attacked["ap"], attacked["worker"], log_text(attacked["site"])
    for name, why in attacked["planted"].items():
        assert (ap / (name + ".bad")).exists() or (ap / (name + ".bad")).is_symlink(), name
        assert not (ap / name).exists() and not (ap / name).is_symlink(), name
        line = next((ln for ln in text.splitlines() if f"worker {worker}: pilot file {name} is bad" in ln), None)
        assert line is not None, f"no log line for {name}"
        assert why in line and f"moved aside as {name}.bad" in line
    assert os.path.getsize(ap / "event_status.900005.json.bad") == BIG  # moved, never read
    assert Path("/etc/passwd").read_text() and os.readlink(ap / "event_status.900001.json.bad") == "/etc/passwd"


def test_heartbeat_of_the_wrong_type_is_moved_aside_or_overwritten_by_the_real_pilot(attacked):
    ap, worker, text = attacked["ap"], attacked["worker"], log_text(attacked["site"])
    moved = f"worker {worker}: pilot file worker_heartbeat.json is bad" in text
    if moved:  # read before the real pilot rewrote it (the usual case: the monitor looks every second)
        assert "'time' must be a number, got str 'abc'" in text
        assert (ap / "worker_heartbeat.json.bad").exists()


def test_ranges_never_dispatched_to_the_worker_are_ignored_with_a_log_line(attacked):
    worker, text = attacked["worker"], log_text(attacked["site"])
    line = next(ln for ln in text.splitlines() if f"worker {worker}: event_status.900009.json reports" in ln)
    assert f"{len(attacked['foreign']) + 1} range(s) not dispatched to this worker" in line
    assert "bogus-range-of-nobody" in line and (attacked["ap"] / "event_status.900009.json.read").exists()


def test_range_requests_are_clamped_to_ranks_times_prefetch_plus_one(attacked):
    ap, worker, pid, text = attacked["ap"], attacked["worker"], attacked["panda_id"], log_text(attacked["site"])
    limit = 2 * (1 + 1)  # 2 ranks x (prefetch 1 + 1)
    assert (
        f"worker {worker}: worker_requestevents.900011.json asks 1000000 ranges of job {pid}; granted {limit}" in text
    )
    assert (
        f"worker {worker}: worker_requestevents.900011.json asks ranges of job {attacked['other_pid']}, "
        "which is not one of its jobs"
    ) in text
    answer = json.loads((ap / "JobsEventRanges.900011.json.read").read_text())  # the real pilot consumed it
    assert set(answer["ranges"]) <= {str(pid)} and len(answer["ranges"].get(str(pid), [])) <= limit
    spec = json.loads((ap / "HPCJobs.json").read_text())
    assert spec["pilot"]["n_ranges"] == limit  # a well-behaved pilot asks exactly what it can use
    for req in ap.glob("worker_requestevents.*.json.read"):  # and every other request was within it
        if not req.name.startswith("worker_requestevents.9000"):
            assert all(r["nRanges"] == limit for r in json.loads(req.read_text())["requests"].values())


def test_worker_page_answers_while_the_hostile_files_are_fresh(attacked):
    during = attacked["during"]
    assert (
        during.status_code == 200 and '<p class="unreadable">unreadable: passwd.out is a symbolic link' in during.text
    )
    assert "root:x:0:0" not in during.text and "SECRET-OF-THE-DAEMON-USER" not in during.text


def test_worker_page_answers_with_unreadable_marks(attacked):
    url, worker = attacked["url"], attacked["worker"]
    responses = [requests.get(f"{url}/monitor/worker/{worker}", timeout=10) for _ in range(45)]  # > thread pool
    html = responses[-1].text
    assert all(r.status_code == 200 for r in responses)
    assert "root:x:0:0" not in html and "SECRET-OF-THE-DAEMON-USER" not in html
    for name, why in attacked["page_files"].items():
        section = html[html.index(f"<h2>{name} ") :]
        assert re.match(r"<h2>[^<]+<small>.*?</small></h2>\s*<p class=\"unreadable\">unreadable: ", section, re.S)
        assert why in section[:600], name
    for name in attacked["planted"]:  # the pilot files table says each was moved aside, and why
        assert re.search(rf"<td>{re.escape(name)}\.bad</td><td><span class=\"unreadable\">moved aside</span>", html)
    assert (
        'event_status.900001.json.bad</td><td><span class="unreadable">moved aside</span></td><td>'
        "event_status.900001.json.bad is a symbolic link" in html
    )


def test_file_page_of_a_link_or_fifo_is_an_unreadable_mark(attacked):
    url, worker = attacked["url"], attacked["worker"]
    for name in ("passwd.out", "fifo.out", "secret.err", "prmon.7.jsonl", "jobReport.json"):
        r = requests.get(f"{url}/monitor/worker/{worker}/file", params={"name": name}, timeout=10)
        assert r.status_code == 200 and 'class="unreadable">unreadable: ' in r.text, name
        assert "root:x:0:0" not in r.text and "SECRET-OF-THE-DAEMON-USER" not in r.text


def test_job_page_marks_bad_prmon_and_job_report(attacked):
    url = attacked["url"]
    r = requests.get(f"{url}/monitor/job/{attacked['panda_id']}", timeout=10)
    assert r.status_code == 200
    assert "jobReport.json unreadable: a FIFO, not a regular file" in r.text
    assert "prmon.7.jsonl unreadable: prmon.7.jsonl is a symbolic link" in r.text
    assert "prmon.8.jsonl unreadable: a FIFO, not a regular file" in r.text
    assert "prmon.9.jsonl unreadable: 2 line(s) that are not JSON objects were skipped" in r.text
    # the timelines (issue 19) are still drawn beside the hostile files, from what the daemon accepted
    assert 'aria-label="node, start and end (workers and the job)"' in r.text
    assert re.search(r'aria-label="worker \d+: busy fraction per rank"', r.text)
    for page, chart in (
        ("/monitor/", "running workers per queue (last 24 h)"),
        (f"/monitor/task/{attacked['task_id']}", "workers: queued → running → ended"),
        ("/monitor/sites", "queue wait (submitted → started) per queue: workers"),
    ):
        answer = requests.get(f"{url}{page}", timeout=10)
        assert answer.status_code == 200 and f'aria-label="{chart}"' in answer.text, page
        assert "root:x:0:0" not in answer.text and "SECRET-OF-THE-DAEMON-USER" not in answer.text


# -- the one reader, without a daemon: what each hostile file is refused as ----------------------------------------


def _reason(ap: Path, name: str, cap: int = 1024) -> str:
    from harvester_edge import pilot_files

    with pytest.raises(pilot_files.Unreadable) as info:
        pilot_files.read_bytes(ap, name, cap)
    return info.value.reason


def test_reader_refuses_links_fifos_big_files_and_symlinked_directories(tmp_path):
    import threading

    from harvester_edge import pilot_files

    ap = tmp_path / "ap"
    (ap / "logs").mkdir(parents=True)
    (ap / "logs" / "ok.log").write_text("fine\n")
    os.symlink("/etc", ap / "etc")
    os.symlink("/etc/passwd", ap / "passwd.out")
    os.mkfifo(ap / "fifo.out")
    (tmp_path / "secret").write_text("secret")
    os.link(tmp_path / "secret", ap / "hard.out")
    with open(ap / "big.out", "wb") as fh:
        fh.truncate(2048)
    assert pilot_files.read_bytes(ap, "logs/ok.log", 1024) == b"fine\n"
    assert _reason(ap, "etc/passwd") == "etc is a symbolic link"  # a symlinked directory below the access point
    assert _reason(ap, "passwd.out") == "passwd.out is a symbolic link"
    assert _reason(ap, "hard.out").startswith("a file with 2 hard links")
    assert _reason(ap, "big.out") == "2048 bytes, over the cap of 1024"
    assert _reason(ap, "../ap/logs/ok.log").startswith("'../ap/logs/ok.log' is not a plain relative name")
    done = threading.Event()

    def read_fifo() -> None:
        assert _reason(ap, "fifo.out") == "a FIFO, not a regular file"
        done.set()

    threading.Thread(target=read_fifo, daemon=True).start()
    assert done.wait(5), "opening a FIFO blocked"  # a writer never comes: a blocking open would hang here
    os.symlink(ap, tmp_path / "ap-link")
    with pytest.raises(pilot_files.Unreadable, match="access point: a symbolic link"):
        pilot_files.read_bytes(tmp_path / "ap-link", "logs/ok.log", 1024)


def test_token_copy_never_writes_through_a_link_the_pilot_planted(tmp_path):
    from harvester_edge.agents.credentials import TOKEN_FILE, write_secret

    ap, victim = tmp_path / "ap", tmp_path / "authorized_keys"
    ap.mkdir()
    victim.write_text("ssh-ed25519 AAAA the daemon user's key\n")
    os.symlink(victim, ap / f".{TOKEN_FILE}.tmp")  # the temporary name the daemon writes first
    os.symlink(victim, ap / TOKEN_FILE)
    write_secret(ap / TOKEN_FILE, "new-token")
    assert victim.read_text() == "ssh-ed25519 AAAA the daemon user's key\n"
    assert not (ap / TOKEN_FILE).is_symlink() and (ap / TOKEN_FILE).read_text() == "new-token"
    assert oct((ap / TOKEN_FILE).stat().st_mode & 0o777) == "0o600"
