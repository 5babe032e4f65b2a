"""LSF plugin, fed through the command seam from recorded outputs in IBM's documented formats (data/lsf/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harvester_edge.batch import BatchError, BatchState, WorkerSpec
from harvester_edge.plugins import lsf_parse as lp
from harvester_edge.plugins.lsf import LSFPlugin
from harvester_edge.seams.commands import RecordedRunner

DATA = Path(__file__).resolve().parent / "data" / "lsf"


def recorded(*names: str) -> RecordedRunner:
    results = []
    for name in names:
        results += json.loads((DATA / name).read_text())
    return RecordedRunner(results)


@pytest.fixture
def queue(queue_factory):
    return queue_factory(
        name="normal",
        batch="lsf",
        partition="normal",
        account="proj1",
        launcher="mpirun",
        constraint="type==X86_64",
        memory_mb=4000,
        drain_warning=300,
    )


def spec(tmp_path: Path, worker_id: int = 1) -> WorkerSpec:
    ap = tmp_path / f"w{worker_id}"
    return WorkerSpec(
        worker_id,
        f"he-lab-w{worker_id:06d}",
        ap,
        2,
        4,
        2,
        5400,
        None,
        [sys.executable, "-m", "jumbo", "--access-point", str(ap)],
        {},
    )


def test_render(tmp_path, queue):
    text = LSFPlugin(queue, RecordedRunner([])).render_script(spec(tmp_path))
    for needle in [
        "#BSUB -J he-lab-w000001",
        "#BSUB -n 8",
        '#BSUB -R "span[ptile=4]"',
        '#BSUB -R "affinity[core(2)]"',
        "#BSUB -W 1:30",
        f"#BSUB -o {tmp_path}/w1/lsf-%J.out",
        "#BSUB -q normal",
        "#BSUB -P proj1",
        '#BSUB -R "select[type==X86_64]"',
        '#BSUB -R "rusage[mem=1000]"',
        "#BSUB -wa USR1",
        "#BSUB -wt 5",
        "mpirun -np 8 --map-by ppr:4:node",
    ]:
        assert needle in text, needle
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_submit_pipes_script_and_parses_job_ids(tmp_path, queue):
    runner = recorded("bsub_submitted.json")
    results = LSFPlugin(queue, runner).submit([spec(tmp_path, 1), spec(tmp_path, 2)])
    assert [(r.worker_id, r.batch_id, r.error) for r in results] == [(1, "4242", None), (2, "4243", None)]
    argv, stdin = runner.calls[0]
    assert argv == ("bsub",) and "#BSUB -J he-lab-w000001" in stdin
    assert (tmp_path / "w1" / "worker.bsub").read_text() == stdin  # written before submitting


def test_submit_errors_are_classified(tmp_path, queue):
    results = LSFPlugin(queue, recorded("bsub_errors.json")).submit([spec(tmp_path, i) for i in range(1, 6)])
    assert [r.batch_id for r in results] == [None] * 5
    assert [r.transient for r in results] == [False, False, True, True, True]
    assert "No such queue" in results[0].error and "RUNLIMIT" in results[1].error
    assert "find_by_name" in results[3].error  # a timed-out bsub may have submitted


def test_status_every_documented_state(queue):
    ids = [str(i) for i in range(4242, 4250)]
    got = LSFPlugin(queue, recorded("bjobs_status.json")).status(ids)
    assert {k: v.state for k, v in got.items()} == {
        "4242": BatchState.RUNNING,
        "4243": BatchState.QUEUED,
        "4244": BatchState.FINISHED,
        "4245": BatchState.FAILED,
        "4246": BatchState.TIMEOUT,
        "4247": BatchState.CANCELLED,
        "4248": BatchState.SUSPENDED,
        "4249": BatchState.MISSING,
    }
    assert got["4243"].reason.startswith("Job's resource requirements")
    assert got["4245"].exit_code == 3 and got["4244"].exit_code == 0
    assert got["4242"].start_time is not None and got["4244"].end_time > got["4244"].start_time
    assert got["4249"].reason == "Job <4249> is not found"


def test_status_errors(queue):
    plugin = LSFPlugin(queue, recorded("bjobs_errors.json"))
    with pytest.raises(BatchError) as err:
        plugin.status(["1"])
    assert err.value.transient and "LSF is down" in str(err.value)
    assert plugin.status(["1"])["1"].state is BatchState.MISSING  # "No unfinished job found"


def test_cancel_one_call_per_id_outcome(queue):
    got = LSFPlugin(queue, recorded("bkill.json")).cancel(["4242", "4243", "4244", "4245"])
    assert got == {"4242": None, "4243": None, "4244": None, "4245": "User permission denied"}


def test_find_by_name_newest_wins(queue):
    runner = recorded("bjobs_names.json")
    assert LSFPlugin(queue, runner).find_by_name(["he-lab-w000001", "he-lab-w000009"]) == {"he-lab-w000001": "4242"}


def test_all_states_and_times():
    for stat in [
        "PEND",
        "PSUSP",
        "RUN",
        "USUSP",
        "SSUSP",
        "DONE",
        "EXIT",
        "UNKWN",
        "WAIT",
        "ZOMBI",
        "POST_DONE",
        "POST_ERR",
        "PROV",
    ]:
        assert stat in lp.LSF_STATES
    assert lp.parse_time("Nov 22 05:00 2025") is not None and lp.parse_time("-") is None
    assert lp.format_walltime(59) == "0:01" and lp.format_walltime(5400) == "1:30"
