"""Sweeper: cancels workers whose pilot heartbeat is lost or that queued too long (drain first, then scancel),
cancels unsubmitted ones in the book only, removes ended access points after cleanup_delay (archived first when
paths.archives is set), and forgets jobs and archives that ended more than keep_history ago."""

from __future__ import annotations

import os
import tarfile

from doubles import out, panda_ranges
from harvester_edge.agents.sweeper import Sweeper
from jumbo import protocol

HOUR = 3600.0


def test_a_worker_whose_pilot_heartbeat_is_lost_is_drained_and_cancelled(make_site):
    site = make_site(daemon={"heartbeat_timeout": "30m"})
    now = site.clock.now()
    lost = site.worker(1, "running", batch_id="11", started_at=now - 2 * HOUR, heartbeat_at=now - 31 * 60)
    site.worker(2, "running", batch_id="12", started_at=now - 2 * HOUR, heartbeat_at=now - 29 * 60)
    # no heartbeat at all: counted from the worker's start
    site.worker(3, "running", batch_id="13", started_at=now - 60)
    site.worker(4, "running", batch_id="14", started_at=now - 31 * 60)
    site.runner.always("scancel", out(""))
    site.cycle(site.agent(Sweeper))
    assert [w["kill_requested"] for w in site.read("workers")] == [1, 0, 0, 1]
    assert "heartbeat lost" in site.one("workers", id=1)["error"]
    assert site.runner.called("scancel") == [("scancel", "11", "14")]
    assert (lost / protocol.KILL).exists()  # the pilot is asked to drain first


def test_a_worker_queued_longer_than_queued_timeout_is_cancelled(make_site):
    site = make_site(daemon={"queued_timeout": "1h"})
    now = site.clock.now()
    site.worker(1, "queued", batch_id="11", submitted_at=now - HOUR - 1)
    site.worker(2, "queued", batch_id="12", submitted_at=now - HOUR + 1)
    site.runner.always("scancel", out(""))
    site.cycle(site.agent(Sweeper))
    assert site.runner.called("scancel") == [("scancel", "11")]
    assert "queued longer than 3600s" in site.one("workers", id=1)["error"]


def test_a_kill_before_submission_cancels_in_the_book_only(site):
    site.worker(1, "new", kill_requested=1)
    site.cycle(site.agent(Sweeper))
    assert site.one("workers")["state"] == "cancelled"
    assert site.runner.calls == []


def test_a_failed_scancel_is_tried_again_next_cycle(site):
    site.worker(1, "running", batch_id="11", kill_requested=1, started_at=site.clock.now())
    site.runner.answer("scancel", out(stderr="scancel: error: Unable to contact slurm controller", returncode=1))
    sweeper = site.agent(Sweeper)
    site.cycle(sweeper)
    site.runner.answer("scancel", out(""))
    site.clock.advance(30)
    site.cycle(sweeper)
    assert site.runner.called("scancel") == [("scancel", "11"), ("scancel", "11")]
    assert site.one("workers")["state"] == "running"  # the monitor sees it CANCELLED on its next status call


def test_ended_access_points_are_removed_after_cleanup_delay(make_site):
    site = make_site(daemon={"cleanup_delay": "1h"})
    now = site.clock.now()
    site.job(1, "running")
    old = site.worker(1, "finished", ended_at=now - HOUR - 1)
    recent = site.worker(2, "finished", ended_at=now - HOUR + 1)
    unreported = site.worker(3, "failed", jobs=(1,), ended_at=now - 2 * HOUR)
    site.ranges(1, panda_ranges(1, [1]), state="dispatched", worker_id=3)  # the monitor hands it back first
    site.cycle(site.agent(Sweeper))
    assert (old.exists(), recent.exists(), unreported.exists()) == (False, True, True)
    assert [w["cleaned_at"] for w in site.read("workers")] == [now, None, None]


def test_jobs_ended_longer_than_keep_history_ago_are_forgotten(make_site):
    site = make_site(daemon={"keep_history": "1d"})
    now = site.clock.now()
    site.job(1, "finished", updated_at=now - 2 * 86400)
    site.worker(1, "finished", jobs=(1,), cleaned_at=now - 86400)
    site.ranges(1, panda_ranges(1, [1, 2]), state="finished", worker_id=1)
    site.job(2, "finished", updated_at=now - 3600)  # ended an hour ago: kept
    site.cycle(site.agent(Sweeper))
    assert [j["panda_id"] for j in site.read("jobs")] == [2]
    assert site.read("workers") == [] and site.read("event_ranges") == []


def test_nothing_is_forgotten_while_a_message_waits_for_the_central_service(make_site):
    site = make_site(daemon={"keep_history": "1d"})
    site.job(1, "finished", updated_at=site.clock.now() - 2 * 86400)
    site.message("update_jobs", [{"jobId": 1, "state": "finished"}])
    site.cycle(site.agent(Sweeper))
    assert [j["panda_id"] for j in site.read("jobs")] == [1]


def archive_members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_an_access_point_is_archived_before_it_is_removed(make_site, tmp_path):
    site = make_site(daemon={"cleanup_delay": "1h"}, paths={"archives": str(tmp_path / "archives")})
    ap = site.worker(1, "finished", ended_at=site.clock.now() - HOUR - 1)
    (ap / "logs").mkdir()
    (ap / "logs" / "payload.0.log").write_text("event 1 done\n")
    (ap / protocol.JOB_REPORT).write_text('{"exitCode": 0}')
    site.cycle(site.agent(Sweeper))
    assert not ap.exists() and site.one("workers")["cleaned_at"] == site.clock.now()
    members = archive_members(tmp_path / "archives" / "worker-1.tar.gz")
    assert members["logs/payload.0.log"] == b"event 1 done\n"
    assert members[protocol.JOB_REPORT] == b'{"exitCode": 0}'
    assert (tmp_path / "archives").stat().st_mode & 0o777 == 0o700


def test_an_access_point_whose_archive_cannot_be_written_stays_until_it_can(make_site, tmp_path):
    blocked = tmp_path / "archives"
    blocked.write_text("a file where the archive folder should be")
    site = make_site(daemon={"cleanup_delay": "1h"}, paths={"archives": str(blocked)})
    ap = site.worker(1, "finished", ended_at=site.clock.now() - HOUR - 1)
    sweeper = site.agent(Sweeper)
    site.cycle(sweeper)
    assert ap.exists() and site.one("workers")["cleaned_at"] is None  # nothing lost
    blocked.unlink()
    site.clock.advance(30)
    site.cycle(sweeper)
    assert not ap.exists() and (blocked / "worker-1.tar.gz").is_file()


def test_archives_older_than_keep_history_are_removed(make_site, tmp_path):
    where = tmp_path / "archives"
    where.mkdir()
    site = make_site(daemon={"keep_history": "1d"}, paths={"archives": str(where)})
    now = site.clock.now()
    for worker_id, age in ((1, 2 * 86400), (2, 3600)):
        path = where / f"worker-{worker_id}.tar.gz"
        path.write_bytes(b"")
        os.utime(path, (now - age, now - age))
    (where / "notes.txt").write_text("not an archive: left alone")
    os.utime(where / "notes.txt", (now - 9 * 86400, now - 9 * 86400))
    site.cycle(site.agent(Sweeper))
    assert sorted(p.name for p in where.iterdir()) == ["notes.txt", "worker-2.tar.gz"]
