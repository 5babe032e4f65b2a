"""The job page's pilot fields and the log tarball lookup (no link is followed, no name leaves the directory)."""

from __future__ import annotations

import json
import os

from harvester_edge.web.data import find_log_tarball, pilot_fields


def test_finds_the_tarball_one_level_down_and_nowhere_else(tmp_path):
    (tmp_path / "PanDA_Pilot3_1_2").mkdir()
    (tmp_path / "PanDA_Pilot3_1_2" / "t.5.log.tgz").write_bytes(b"x")
    assert find_log_tarball(tmp_path, "t.5.log.tgz") == (tmp_path, "PanDA_Pilot3_1_2/t.5.log.tgz")
    assert find_log_tarball(tmp_path, "t.6.log.tgz") is None
    assert find_log_tarball(tmp_path, "../t.5.log.tgz") is None and find_log_tarball(None, "t.5.log.tgz") is None
    secret = tmp_path.parent / "secret.log.tgz"
    secret.write_bytes(b"s")
    os.symlink(secret, tmp_path / "s.7.log.tgz")
    (tmp_path / "linked").symlink_to(tmp_path / "PanDA_Pilot3_1_2")
    assert find_log_tarball(tmp_path, "s.7.log.tgz") is None  # a link is not the pilot's tarball


def test_pilot_fields_survive_bad_rows():
    assert pilot_fields({"state_history": "not json", "log_file": "{", "pilot_timing": None}) == {
        "history": [],
        "timing": [],
        "log_file": None,
    }
    fields = pilot_fields(
        {
            "state_history": json.dumps([["sent", 1.0], ["running", 2.0]]),
            "pilot_timing": "1|2|3|4|5|6",
            "log_file": json.dumps({"lfn": "a.1.log.tgz"}),
        }
    )
    assert [h["state"] for h in fields["history"]] == ["sent", "running"]
    assert fields["timing"][2] == ("payload", "3") and fields["log_file"]["lfn"] == "a.1.log.tgz"
