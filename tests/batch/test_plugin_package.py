"""A batch plugin installed by another package: found through its entry point, accepted by the site config, and
built on ScriptBatchPlugin by overriding its steps (render, submit arguments, parse) — run against a real `qsub`
stand-in process. The package is a real distribution (a *.dist-info with entry_points.txt) put on sys.path."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from harvester_edge.batch import ScriptBatchPlugin, WorkerSpec, load_plugin
from harvester_edge.config import QueueConfig, load_config
from harvester_edge.errors import ConfigError
from harvester_edge.seams.commands import CommandRunner

PLUGIN = """
from harvester_edge.batch import BatchState, ScriptBatchPlugin, SubmitResult, WorkerStatus


class PBSPlugin(ScriptBatchPlugin):
    name = "pbs"
    script_name = "worker.pbs"

    def render_script(self, spec):
        return f"#!/bin/bash\\n#PBS -N {spec.job_name}\\n#PBS -q {self.queue.partition}\\n"

    def submit_args(self, path, text):
        return ["qsub", str(path)], None

    def parse_submit(self, spec, res):
        if res.ok:
            return SubmitResult(spec.worker_id, res.stdout.strip(), None)
        return SubmitResult(spec.worker_id, None, f"qsub failed: {res.stderr.strip()}", True)

    def status(self, batch_ids):
        res = self.run_command(["qstat", *batch_ids], "qstat")
        return {b: WorkerStatus(b, BatchState.QUEUED, res.stdout.strip()) for b in batch_ids}

    def cancel(self, batch_ids):
        return {b: None for b in batch_ids}

    def find_by_name(self, job_names):
        return {}
"""

SITE = """\
site: lab
queues:
  - name: workq
    batch: pbs
    partition: workq
paths:
  work_dir: work
"""


@pytest.fixture
def pbs_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install the distribution "edge-pbs" (module edge_pbs_plugin) by putting its folder on sys.path."""
    site = tmp_path / "site-packages"
    info = site / "edge_pbs-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "edge_pbs_plugin.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edge-pbs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[harvester_edge.batch]\npbs = edge_pbs_plugin:PBSPlugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "edge_pbs_plugin", raising=False)
    return site


def fake_qsub(tmp_path: Path, body: str) -> CommandRunner:
    """A `qsub` on PATH that is a real process: it records its argv and cwd, then runs `body`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    qsub = bindir / "qsub"
    qsub.write_text(f'#!/bin/bash\necho "$PWD $*" >> {tmp_path}/qsub.calls\n{body}\n')
    qsub.chmod(qsub.stat().st_mode | stat.S_IXUSR)
    return CommandRunner(env={"PATH": f"{bindir}:{os.environ['PATH']}"})


def spec(tmp_path: Path, worker_id: int = 7) -> WorkerSpec:
    return WorkerSpec(worker_id, f"he-lab-w{worker_id:06d}", tmp_path / f"w{worker_id}", 1, 1, 1, 600)


def test_site_config_accepts_a_plugin_another_package_installed(pbs_package, tmp_path):
    (tmp_path / "site.yaml").write_text(SITE)
    config = load_config(tmp_path / "site.yaml")
    cls = load_plugin(config.queues[0].batch)
    assert cls.name == "pbs" and issubclass(cls, ScriptBatchPlugin)


def test_without_the_package_the_config_error_lists_what_is_installed(tmp_path):
    (tmp_path / "site.yaml").write_text(SITE)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "site.yaml")
    message = str(err.value)
    assert f"{tmp_path / 'site.yaml'}:4: queues[0].batch: batch plugin 'pbs' is not installed" in message
    assert "installed: local, lsf, slurm" in message


def test_script_plugin_submits_through_the_base_class(pbs_package, tmp_path):
    runner = fake_qsub(tmp_path, 'echo "4242.pbs-server"')
    plugin = load_plugin("pbs")(QueueConfig(name="workq", batch="pbs", partition="workq"), runner)
    [result] = plugin.submit([spec(tmp_path)])
    assert result.ok and result.batch_id == "4242.pbs-server"
    script = tmp_path / "w7" / "worker.pbs"
    assert script.read_text().startswith("#!/bin/bash\n#PBS -N he-lab-w000007\n#PBS -q workq")
    assert script.stat().st_mode & 0o777 == 0o755
    # run in the access point, with the script's path as its argument
    assert (tmp_path / "qsub.calls").read_text() == f"{tmp_path / 'w7'} {script}\n"


def test_script_plugin_failures_per_worker(pbs_package, tmp_path):
    runner = fake_qsub(tmp_path, 'echo "qsub: server busy" >&2; exit 1')
    plugin = load_plugin("pbs")(QueueConfig(name="workq", batch="pbs"), runner)
    [busy] = plugin.submit([spec(tmp_path)])
    assert not busy.ok and busy.transient and busy.error == "qsub failed: qsub: server busy"
    # no qsub installed: that worker fails permanently, saying which command is missing
    missing = load_plugin("pbs")(QueueConfig(name="workq", batch="pbs"), CommandRunner(env={"PATH": str(tmp_path)}))
    [gone] = missing.submit([spec(tmp_path, 8)])
    assert not gone.ok and not gone.transient and "qsub" in (gone.error or "")
