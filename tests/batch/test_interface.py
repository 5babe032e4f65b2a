"""The plugin interface: discovery by entry point, states, error classification."""

from __future__ import annotations

import pytest

from harvester_edge.batch import TERMINAL, BatchPlugin, BatchState, UnknownPlugin, classify_error, load_plugin


@pytest.mark.parametrize("name", ["slurm", "lsf", "local"])
def test_plugins_load_by_name(name):
    cls = load_plugin(name)
    assert issubclass(cls, BatchPlugin) and cls.name == name


def test_unknown_plugin_lists_known_names():
    with pytest.raises(UnknownPlugin) as err:
        load_plugin("pbs")
    assert "'pbs'" in str(err.value) and "slurm" in str(err.value) and "lsf" in str(err.value)


def test_states_are_lowercase_strings_and_terminal_set():
    assert all(s.value == s.name.lower() for s in BatchState)
    assert {
        BatchState.FINISHED,
        BatchState.FAILED,
        BatchState.CANCELLED,
        BatchState.TIMEOUT,
        BatchState.MISSING,
    } == TERMINAL
    assert BatchState("running") is BatchState.RUNNING


@pytest.mark.parametrize("name", ["slurm", "lsf", "local"])
def test_constructor_does_no_io(name, tmp_path, monkeypatch, queue_factory):
    from harvester_edge.seams.commands import RecordedRunner

    monkeypatch.setenv("HE_LOCAL_BATCH_DIR", str(tmp_path / "registry"))
    runner = RecordedRunner([])
    load_plugin(name)(queue_factory(batch=name), runner)
    assert runner.calls == [] and not (tmp_path / "registry").exists()


def test_classify_permanent_wins_and_default():
    transient = [(r"timed out", "x")]
    permanent = [(r"invalid", "y")]
    assert classify_error("Socket timed out", transient, permanent) is True
    assert classify_error("invalid ... timed out", transient, permanent) is False
    assert classify_error("something else", transient, permanent) is False
    assert classify_error("something else", transient, permanent, default_transient=True) is True


@pytest.mark.parametrize("name, directive", [("slurm", "#SBATCH --signal=B:USR1@120"), ("lsf", "#BSUB -wt 2")])
def test_plugins_read_the_queue_config_defaults(name, directive, tmp_path):
    """drain_warning left out of the config: the plugin uses the config's documented default (120 s), not one of its own."""
    from harvester_edge.batch import WorkerSpec
    from harvester_edge.config import QueueConfig
    from harvester_edge.seams.commands import RecordedRunner

    queue = QueueConfig(name="q", batch=name)
    assert queue.drain_warning == 120
    spec = WorkerSpec(1, "he-lab-w000001", tmp_path, 1, 1, 1, 600, pilot_argv=["jumbo"])
    assert directive in load_plugin(name)(queue, RecordedRunner([])).render_script(spec).splitlines()
