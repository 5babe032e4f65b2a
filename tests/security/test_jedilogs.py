"""Uploaded logs (file_server/upload_jedi_log, update_jedi_log): safe names, a size cap, private modes, no links."""

from __future__ import annotations

import os
import stat
import zlib

import pytest
import requests

from central.conftest import backend, central_db, db_settings, pg_cluster
from harvester_edge.central import jedilogs
from harvester_edge.central.bodies import BodyTooLarge
from harvester_edge.central.errors import InvalidInput, NotFound
from harvester_edge.central.server import EmbeddedCentral
from harvester_edge.central.settings import CentralSettings


@pytest.mark.parametrize(
    "name", ["..", ".hidden", "a b.log", "x/..", "", "é.log", "a;rm -rf.log", "n" * 201, "log\x00.txt", "dir/"]
)
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidInput):
        jedilogs.store(tmp_path / "central.db", name, b"x", 100)
    assert not (tmp_path / "jedilog").exists() or not any((tmp_path / "jedilog").iterdir())


def test_a_path_keeps_its_last_part_only(tmp_path):
    assert jedilogs.store(tmp_path / "central.db", "../../etc/task_1.log", b"x", 100) == "task_1.log"
    assert (tmp_path / "jedilog" / "task_1.log").read_bytes() == b"x"
    assert not (tmp_path.parent / "etc").exists()


def test_modes_and_replace(tmp_path):
    db = tmp_path / "central.db"
    jedilogs.store(db, "a.log", b"one", 100)
    jedilogs.store(db, "a.log", b"two", 100)
    assert stat.S_IMODE(os.stat(tmp_path / "jedilog").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "jedilog" / "a.log").st_mode) == 0o600
    assert jedilogs.read(db, "a.log", 10) == ("two", 3)
    assert [p.name for p in (tmp_path / "jedilog").iterdir()] == ["a.log"]  # no temporary file left


def test_caps(tmp_path):
    db = tmp_path / "central.db"
    with pytest.raises(BodyTooLarge):
        jedilogs.store(db, "big.log", b"x" * 101, 100)
    jedilogs.append(db, "grow.log", zlib.compress(b"x" * 60), 100)
    with pytest.raises(BodyTooLarge):
        jedilogs.append(db, "grow.log", zlib.compress(b"y" * 60), 100)
    assert jedilogs.read(db, "grow.log", 1000) == ("x" * 60, 60)
    with pytest.raises(InvalidInput):  # a zlib bomb stops at the cap
        jedilogs.append(db, "bomb.log", zlib.compress(b"\0" * 10_000_000), 100)
    with pytest.raises(InvalidInput):
        jedilogs.append(db, "bad.log", b"not zlib", 100)


def test_links_are_never_followed(tmp_path):
    db = tmp_path / "central.db"
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    (tmp_path / "jedilog").mkdir(mode=0o700)
    (tmp_path / "jedilog" / "evil.log").symlink_to(target)
    with pytest.raises(InvalidInput):
        jedilogs.append(db, "evil.log", zlib.compress(b"appended"), 100)
    with pytest.raises(NotFound):
        jedilogs.read(db, "evil.log", 100)
    assert jedilogs.for_job(db, 1) == []
    jedilogs.store(db, "evil.log", b"replaced", 100)  # the link itself is replaced, its target untouched
    assert target.read_text() == "keep" and not (tmp_path / "jedilog" / "evil.log").is_symlink()


def test_http_upload_refusals(tmp_path, central_db):
    central = EmbeddedCentral(
        db_settings(central_db, tmp_path, host="127.0.0.1", port=0, trusted=False, max_body=64 * 1024)
    )
    central.start()
    try:
        url = central.url + "/api/v1/file_server/upload_jedi_log"
        pilot = {"Authorization": "Bearer " + central.authority.issue("p", ["pilot"])}
        harvester = {"Authorization": "Bearer " + central.authority.issue("h", ["harvester"])}
        assert requests.post(url, files={"file": ("a.log", b"x")}, headers=pilot, timeout=10).status_code == 403
        bad = requests.post(url, files={"file": ("../.a", b"x")}, headers=harvester, timeout=10).json()
        assert bad["success"] is False and "not allowed" in bad["message"]
        big = requests.post(url, files={"file": ("b.log", b"x" * 70_000)}, headers=harvester, timeout=10)
        assert big.status_code == 413
        assert not (tmp_path / "jedilog" / "b.log").exists()
        none = requests.post(
            url,
            data=b"--x\r\n\r\n",
            headers={**harvester, "Content-Type": "multipart/form-data; boundary=x"},
            timeout=10,
        ).json()
        assert none["success"] is False and "'file'" in none["message"]
    finally:
        central.stop()
