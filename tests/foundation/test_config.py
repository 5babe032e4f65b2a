"""Site config loading: good configs resolve; every kind of bad config names file, line, key and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester_edge.config import load_config
from harvester_edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
site: test-site
queues:
  - name: q1
    batch: slurm
    partition: debug
    nodes_min: 1
    nodes_max: 2
    walltime_min: 5m
    walltime_max: 1h30m
paths:
  work_dir: work
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


@pytest.fixture(autouse=True)
def no_work_dir_override(monkeypatch):
    monkeypatch.delenv("HARVESTER_EDGE_WORK_DIR", raising=False)


def test_good_config_resolves_paths_and_durations(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.paths.work_dir == tmp_path / "work"
    assert config.db_path == tmp_path / "work" / "harvester.db"
    assert config.central.db == tmp_path / "work" / "central.db"
    assert config.queues[0].walltime_max == 5400
    assert config.queues[0].walltime_min == 300
    assert config.queue("q1").partition == "debug"


def test_work_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("HARVESTER_EDGE_WORK_DIR", str(tmp_path / "elsewhere"))
    assert load_config(write(tmp_path, GOOD)).paths.work_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize("name", ["local.yaml", "slurm-example.yaml", "lsf-example.yaml"])
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert config.queues


def test_unknown_key_did_you_mean(tmp_path):
    message = load_error(tmp_path, GOOD.replace("    partition: debug", "    partiton: debug"))
    assert "site.yaml:5" in message and "queues[0].partiton" in message
    assert "did you mean 'partition'" in message


def test_unknown_top_level_key(tmp_path):
    message = load_error(tmp_path, GOOD + "agnets:\n  fetcher: 5s\n")
    assert "agnets" in message and "did you mean 'agents'" in message and ":12:" in message


def test_wrong_type(tmp_path):
    message = load_error(tmp_path, GOOD.replace("nodes_max: 2", "nodes_max: two"))
    assert "queues[0].nodes_max" in message and "integer" in message and "'two'" in message


def test_missing_required(tmp_path):
    message = load_error(tmp_path, GOOD.replace("    batch: slurm\n", ""))
    assert "queues[0].batch: missing required key" in message


def test_bad_duration(tmp_path):
    message = load_error(tmp_path, GOOD.replace("walltime_max: 1h30m", "walltime_max: 2 hourz"))
    assert "queues[0].walltime_max" in message and "expected a duration" in message and "2 hourz" in message


def test_english_duration_accepted(tmp_path):
    assert load_config(write(tmp_path, GOOD.replace("1h30m", "2 hours"))).queues[0].walltime_max == 7200


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    message = load_error(tmp_path, GOOD.replace("    nodes_min: 1", "    nodes_min: [1"))
    assert "YAML syntax error" in message and "site.yaml:" in message
    assert message.split("site.yaml:")[1].split(":")[0].isdigit()


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read"):  # a directory cannot be read as a file, even by root
        load_config(tmp_path)


def test_empty_file(tmp_path):
    assert "empty" in load_error(tmp_path, "# nothing\n")


def test_not_a_mapping(tmp_path):
    assert "expected a mapping" in load_error(tmp_path, "- a\n- b\n")


def test_bad_enum_value(tmp_path):
    message = load_error(tmp_path, GOOD.replace("    batch: slurm\n", "    batch: slurm\n    launcher: aprun\n"))
    assert "site.yaml:5: queues[0].launcher" in message and "'srun', 'mpirun' or 'none'" in message


def test_batch_plugin_not_installed_names_file_key_and_installed_plugins(tmp_path):
    message = load_error(tmp_path, GOOD.replace("batch: slurm", "batch: pbs"))
    assert "site.yaml:4: queues[0].batch: batch plugin 'pbs' is not installed" in message
    assert "installed: local, lsf, slurm" in message and "'harvester_edge.batch'" in message


def test_min_above_max(tmp_path):
    message = load_error(tmp_path, GOOD.replace("nodes_min: 1", "nodes_min: 4"))
    assert "nodes_min (4) must not exceed nodes_max (2)" in message


def test_duplicate_queue_names(tmp_path):
    text = GOOD.replace("paths:", "  - name: q1\n    batch: local\npaths:")
    assert "queue names must be unique" in load_error(tmp_path, text)


def test_empty_queue_list(tmp_path):
    message = load_error(tmp_path, GOOD.split("queues:")[0] + "queues: []\npaths:\n  work_dir: w\n")
    assert "queues" in message and "at least 1" in message


def test_negative_number(tmp_path):
    message = load_error(tmp_path, GOOD.replace("nodes_min: 1", "nodes_min: -1"))
    assert "queues[0].nodes_min" in message and "greater than 0" in message


def test_nested_unknown_key_in_central(tmp_path):
    message = load_error(tmp_path, GOOD + "central:\n  trusetd: true\n")
    assert "central.trusetd" in message and "did you mean 'trusted'" in message


def test_remote_central_needs_url(tmp_path):
    message = load_error(tmp_path, GOOD + "central:\n  mode: remote\n")
    assert "central" in message and "url" in message


def test_several_problems_reported_together(tmp_path):
    message = load_error(tmp_path, GOOD.replace("nodes_max: 2", "nodes_max: x").replace("site: test-site", "sit: a"))
    assert len(message.splitlines()) == 3, message  # one line per problem, each named:
    assert "site: missing required key" in message and "unknown key 'sit'" in message
    assert "queues[0].nodes_max" in message


def test_persistent_queue_option_reaches_the_pilot_settings(tmp_path):
    config = load_config(write(tmp_path, GOOD.replace("    partition: debug", "    persistent: {idle_timeout: 10m}")))
    assert config.queues[0].persistent is not None and config.queues[0].persistent.idle_timeout == 600
    assert config.queues[0].pilot_settings()["idle_timeout"] == 600.0
    plain = load_config(write(tmp_path, GOOD))
    assert plain.queues[0].persistent is None and "idle_timeout" not in plain.queues[0].pilot_settings()
    default = load_config(write(tmp_path, GOOD.replace("    partition: debug", "    persistent: {}")))
    assert default.queues[0].persistent is not None and default.queues[0].persistent.idle_timeout == 600


@pytest.mark.parametrize(
    "value, expected",
    [
        ("{idle_timeout: soon}", "queues[0].persistent.idle_timeout"),
        ("{idle_timeout: 0}", "queues[0].persistent.idle_timeout"),
        ("{idle_timout: 5m}", "did you mean 'idle_timeout'"),
        ("yes", "queues[0].persistent"),
    ],
)
def test_bad_persistent_option_names_the_key(tmp_path, value, expected):
    message = load_error(tmp_path, GOOD.replace("    partition: debug", f"    persistent: {value}"))
    assert expected in message and "site.yaml:5" in message, message
