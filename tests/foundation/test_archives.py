"""Archives of ended access points (harvester_edge.archives): what goes in, what a hostile pilot cannot smuggle in,
the cap, and that nothing half-written is left under the final name."""

from __future__ import annotations

import json
import os
import tarfile
import time

import pytest

from harvester_edge import archives

NOW = time.time()


def members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture
def ap(tmp_path):
    ap = tmp_path / "w000007"
    (ap / "logs").mkdir(parents=True)
    (ap / "logs" / "payload.0.log").write_text("rank 0 log\n")
    (ap / "jobReport.json").write_text('{"exitCode": 0}')
    (ap / "prmon.0.jsonl").write_text('{"pss": 1}\n')
    (ap / "slurm-12.out").write_text("batch stdout\n")
    (ap / "HPCJobs.json").write_text("{}")
    (ap / "outputs" / "101").mkdir(parents=True)
    (ap / "outputs" / "101" / "r1.out").write_bytes(b"x" * 1000)  # data products stay out
    (ap / "JobsEventRanges.3.json.read").write_text("[]")  # hand-off files stay out
    (ap / "event_status.2.json").write_text("{}")
    return ap


def test_logs_report_and_monitoring_go_in_and_data_products_stay_out(ap, tmp_path):
    path = archives.archive_access_point(ap, tmp_path / "arch", 7, 1 << 20, NOW)
    assert path == tmp_path / "arch" / "worker-7.tar.gz"
    got = members(path)
    assert set(got) == {
        "HPCJobs.json",
        "jobReport.json",
        "prmon.0.jsonl",
        "slurm-12.out",
        "logs/payload.0.log",
        "MANIFEST.json",
    }
    assert got["logs/payload.0.log"] == b"rank 0 log\n"
    manifest = json.loads(got["MANIFEST.json"])
    assert manifest["worker"] == 7 and manifest["skipped"] == [] and manifest["written"] == NOW
    assert path.stat().st_mode & 0o777 == 0o600 and abs(path.stat().st_mtime - NOW) < 1
    assert os.listdir(tmp_path / "arch") == ["worker-7.tar.gz"]  # no temporary left


def test_links_fifos_and_hard_links_are_listed_as_skipped_never_followed(ap, tmp_path):
    (ap / "passwd.log").symlink_to("/etc/passwd")
    os.mkfifo(ap / "pipe.log")
    (ap / "logs" / "twin.log").hardlink_to(ap / "jobReport.json")  # jobReport.json now has 2 links as well
    (ap / "logs" / "sub").symlink_to("/etc")
    path = archives.archive_access_point(ap, tmp_path / "arch", 7, 1 << 20, NOW)
    got = members(path)
    assert "passwd.log" not in got and "pipe.log" not in got and "logs/twin.log" not in got
    assert b"root:" not in b"".join(got.values())
    skipped = {s["name"]: s["reason"] for s in json.loads(got["MANIFEST.json"])["skipped"]}
    assert "symbolic link" in skipped["passwd.log"]
    assert "FIFO" in skipped["pipe.log"]
    assert "hard links" in skipped["logs/twin.log"] and "hard links" in skipped["jobReport.json"]


def test_an_access_point_replaced_by_a_link_leaves_a_manifest_only(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.log").write_text("not the pilot's")
    (tmp_path / "w000008").symlink_to(tmp_path / "elsewhere")
    path = archives.archive_access_point(tmp_path / "w000008", tmp_path / "arch", 8, 1 << 20, NOW)
    got = members(path)
    assert list(got) == ["MANIFEST.json"]
    assert json.loads(got["MANIFEST.json"])["skipped"][0]["name"] == "."


def test_the_cap_keeps_the_end_of_a_long_log(ap, tmp_path):
    long = b"a" * 5000 + b"THE END\n"
    (ap / "logs" / "payload.1.log").write_bytes(long)  # sorted last: what is left of the cap goes to it
    path = archives.archive_access_point(ap, tmp_path / "arch", 7, 1000, NOW)
    got = members(path)
    before = sum(len(v) for k, v in got.items() if k not in ("MANIFEST.json", "logs/payload.1.log"))
    assert got["logs/payload.1.log"] == long[-(1000 - before) :]
    files = {f["name"]: f for f in json.loads(got["MANIFEST.json"])["files"]}
    assert files["logs/payload.1.log"] == {
        "name": "logs/payload.1.log",
        "size": 5008,
        "kept": 1000 - before,
        "truncated": True,
    }
    assert not files["logs/payload.0.log"].get("truncated")


def test_a_gone_access_point_gives_no_archive(tmp_path):
    assert archives.archive_access_point(tmp_path / "nothing", tmp_path / "arch", 9, 1 << 20, NOW) is None
    assert not (tmp_path / "arch").exists()


def test_a_failed_write_leaves_nothing_under_the_final_name(ap, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archives, "_add_files", boom)
    with pytest.raises(OSError):
        archives.archive_access_point(ap, tmp_path / "arch", 7, 1 << 20, NOW)
    assert os.listdir(tmp_path / "arch") == []


def test_prune_removes_old_archives_only(tmp_path):
    where = tmp_path / "arch"
    where.mkdir()
    for name, age in (("worker-1.tar.gz", 100), ("worker-2.tar.gz", 10), ("other.tar.gz", 100)):
        (where / name).write_bytes(b"")
        os.utime(where / name, (NOW - age, NOW - age))
    (where / "worker-3.tar.gz").symlink_to(where / "other.tar.gz")
    assert archives.prune_archives(where, NOW - 50, 10) == 1
    assert sorted(os.listdir(where)) == ["other.tar.gz", "worker-2.tar.gz", "worker-3.tar.gz"]
    assert archives.prune_archives(tmp_path / "missing", NOW, 10) == 0
