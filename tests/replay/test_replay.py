"""Replaying the checked-in traces (Slurm from the local cluster, LSF from documented outputs) with no batch system
and no network, and seeing a changed harvester decision reported as a divergence with a diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from harvester_edge.replay import trace
from harvester_edge.replay.cli import replay_command
from harvester_edge.replay.replayer import replay
from harvester_edge.shaper import Shape


def with_queue(**changes):
    def adjust(config):
        return config.model_copy(update={"queues": [config.queues[0].model_copy(update=changes)]})

    return adjust


@pytest.mark.parametrize("name", ["slurm.jsonl.gz", "lsf.jsonl.gz", "remote.jsonl.gz"])
def test_checked_in_traces_replay_without_divergence(traces_dir, name):
    head, records = trace.read_trace(traces_dir / name)
    report = replay(traces_dir / name)
    assert report.ok, report.render()
    assert report.cycles == sum(1 for r in records if r["kind"] == "cycle")
    assert report.calls == sum(1 for r in records if r["kind"] != "cycle" and r.get("cycle"))
    batch = {
        "slurm.jsonl.gz": {"sbatch", "squeue"},
        "lsf.jsonl.gz": {"bsub", "bjobs"},
        "remote.jsonl.gz": {"bsub", "bjobs"},
    }[name]
    assert batch <= {r["argv"][0] for r in records if r["kind"] == "command"}


def test_changed_queue_limit_diverges_at_the_fetch(traces_dir):
    report = replay(traces_dir / "lsf.jsonl.gz", adjust=with_queue(max_running_workers=3))
    assert not report.ok
    d = report.divergence
    assert d.agent == "fetcher" and d.call == 1 and d.line == 3
    assert d.expected["path"] == "/api/v1/pilot/acquire_jobs" and d.expected["json"]["n_jobs"] == 4
    assert d.actual["json"]["n_jobs"] == 3
    assert '-  "n_jobs": 4,' in d.diff and '+  "n_jobs": 3,' in d.diff
    assert "DIVERGED at lsf.jsonl.gz:3" in report.render()


def test_monkeypatched_shaper_diverges_at_the_submission(traces_dir, monkeypatch):
    import harvester_edge.agents.submitter as submitter

    real = submitter.shape_workers

    def longer(queue, events_left, seconds_per_event, slots, idle_nodes=None, **kwargs):
        return [
            Shape(s.nodes, s.walltime + 60, s.events)
            for s in real(queue, events_left, seconds_per_event, slots, idle_nodes, **kwargs)
        ]

    monkeypatch.setattr(submitter, "shape_workers", longer)
    report = replay(traces_dir / "slurm.jsonl.gz")
    assert not report.ok
    d = report.divergence
    # the batch script is written through the pilot-file seam before sbatch runs: the write is the recorded call
    # that differs (after the job spec, which is the same), and the diff shows the --time line that changed
    assert d.agent == "submitter" and d.message == "the replayed code made a different file call"
    assert d.expected["op"] == d.actual["op"] == "write_script" and d.call == 2
    assert d.expected["args"][:2] == d.actual["args"][:2] == ["@WORK@/workers/w000001", "worker.sbatch"]
    changed = [line for line in d.diff.splitlines() if line.startswith(("-  ", "+  "))]
    assert [line[0] for line in changed if "#SBATCH --time=" in line] == ["-", "+"]
    report_lsf = replay(traces_dir / "lsf.jsonl.gz")
    assert not report_lsf.ok
    d = report_lsf.divergence
    assert d.agent == "submitter" and d.expected["op"] == "write_script" and d.expected["args"][1] == "worker.bsub"
    assert "#BSUB -W 0:03" in d.expected["args"][2] and "#BSUB -W 0:04" in d.actual["args"][2]
    changed = [line.replace(" ", "") for line in d.diff.splitlines() if line.startswith(("-", "+"))]
    assert '-"#BSUB-W0:03",' in changed and '+"#BSUB-W0:04",' in changed


def test_missing_and_extra_calls_are_divergences(record_synthetic, tmp_path):
    path = record_synthetic()
    lines = path.read_text().splitlines()
    # drop one recorded squeue-less bjobs call: the replayed monitor makes a call the recording lacks
    index = next(i for i, line in enumerate(lines) if '"argv":["bjobs"' in line)
    dropped = tmp_path / "dropped.jsonl"
    dropped.write_text("\n".join(lines[:index] + lines[index + 1 :]) + "\n")
    report = replay(dropped)
    assert not report.ok and report.divergence.agent == "monitor"
    assert report.divergence.actual["argv"][0] == "bjobs"
    assert report.divergence.message == ("the replayed code made a command call where the recording has a file call")
    # an extra recorded call the code no longer makes
    extra = json.loads(lines[index])
    extra["seq"] = 10**6
    cycle_line = max(i for i in range(index) if '"kind":"cycle"' in lines[i])
    nxt = next(i for i in range(index + 1, len(lines)) if '"kind":"cycle"' in lines[i])
    more = tmp_path / "more.jsonl"
    more.write_text("\n".join(lines[:nxt] + [json.dumps(extra)] + lines[nxt:]) + "\n")
    report = replay(more)
    assert not report.ok
    assert "more call(s) in this cycle" in report.divergence.message
    assert report.divergence.line == nxt + 1 and cycle_line < nxt


def test_cli_strict_exit_codes(traces_dir, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(replay_command, [str(traces_dir / "lsf.jsonl.gz"), "--strict", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "no divergence" in ok.output
    # a trace whose recorded answer to the first fetch is different: this code asks for other jobs next
    lines = trace.open_text(traces_dir / "lsf.jsonl.gz", "r").read().splitlines()
    rec = json.loads(lines[2])
    rec["json"]["n_jobs"] = 1
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(lines[:2] + [json.dumps(rec)] + lines[3:]) + "\n")
    lenient = runner.invoke(replay_command, [str(changed), "--no-progress"])
    assert lenient.exit_code == 0 and "DIVERGED at changed.jsonl:3" in lenient.output
    strict = runner.invoke(replay_command, [str(changed), "--strict", "--json"])
    assert strict.exit_code == 1
    assert json.loads(strict.output)["divergence"]["line"] == 3


def test_replay_is_deterministic(traces_dir):
    a = replay(traces_dir / "lsf.jsonl.gz", adjust=with_queue(max_queued_workers=1))
    b = replay(traces_dir / "lsf.jsonl.gz", adjust=with_queue(max_queued_workers=1))
    # one queued worker fewer: the recording makes a second worker's access point where the replay goes on to submit
    assert not a.ok and a.divergence.agent == "submitter"
    assert a.divergence.expected["op"] == "write_job_spec" and a.divergence.actual["op"] == "write_script"
    assert a.divergence.expected["args"][0] == "@WORK@/workers/w000002"
    assert (a.divergence.line, a.divergence.diff) == (b.divergence.line, b.divergence.diff)
    assert Path(a.trace).name == "lsf.jsonl.gz"
