"""Slurm parsers, state map, script rendering and the status/cancel flows over recorded outputs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from harvester_edge.batch import BatchError, BatchState, WorkerSpec, classify_error
from harvester_edge.plugins import slurm_parse as sp
from harvester_edge.plugins.slurm import SlurmPlugin
from harvester_edge.seams.commands import RecordedRunner

DATA = Path(__file__).resolve().parent / "data" / "slurm"

ISSUE_STATES = {  # every state issue 4 names, and what the harvester must see
    "PENDING": BatchState.QUEUED,
    "CONFIGURING": BatchState.RUNNING,
    "RUNNING": BatchState.RUNNING,
    "COMPLETING": BatchState.RUNNING,
    "COMPLETED": BatchState.FINISHED,
    "FAILED": BatchState.FAILED,
    "TIMEOUT": BatchState.TIMEOUT,
    "PREEMPTED": BatchState.CANCELLED,
    "NODE_FAIL": BatchState.FAILED,
    "OUT_OF_MEMORY": BatchState.FAILED,
    "CANCELLED": BatchState.CANCELLED,
    "BOOT_FAIL": BatchState.FAILED,
    "DEADLINE": BatchState.TIMEOUT,
    "SUSPENDED": BatchState.SUSPENDED,
    "REQUEUED": BatchState.QUEUED,
}
# the rest of squeue(1)'s JOB STATE CODES (long forms)
OTHER_SQUEUE_STATES = [
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "RESV_DEL_HOLD",
    "REVOKED",
    "SIGNALING",
    "SPECIAL_EXIT",
    "STAGE_OUT",
    "STOPPED",
]


@pytest.mark.parametrize("raw,expected", sorted(ISSUE_STATES.items()))
def test_issue_states_map(raw, expected):
    assert sp.map_state(raw) is expected


def test_every_squeue_state_is_known():
    assert all(sp.map_state(s) is not BatchState.UNKNOWN for s in OTHER_SQUEUE_STATES)


def test_unknown_state_warns(caplog):
    with caplog.at_level(logging.WARNING):
        assert sp.map_state("WEIRD_NEW", "77") is BatchState.UNKNOWN
    assert "77" in caplog.text and "WEIRD_NEW" in caplog.text


def test_small_parsers():
    assert sp.map_state("CANCELLED by 1000") is BatchState.CANCELLED
    assert sp.parse_exit_code("3:0") == 3 and sp.parse_exit_code("0:9") == 137 and sp.parse_exit_code("") is None
    assert sp.format_walltime(90) == "0:01:30" and sp.format_walltime(7322) == "2:02:02"
    assert sp.format_walltime(10) == "0:01:00"
    assert sp.parse_sbatch("1234;lab\n") == "1234" and sp.parse_sbatch("56\n") == "56"
    assert sp.parse_sbatch("sbatch: error\n") is None
    assert sp.parse_time("N/A") is None and sp.parse_time("2026-11-22T05:00:42") > 1.7e9


def test_squeue_sample():
    wanted = {str(i) for i in range(101, 109)}
    got = sp.squeue_statuses((DATA / "squeue_all.txt").read_text(), wanted)
    assert set(got) == wanted  # 999 is not ours
    assert got["101"].state is BatchState.QUEUED and got["101"].reason == "Resources"
    assert got["102"].state is BatchState.RUNNING and got["102"].start_time is not None
    assert got["103"].state is BatchState.FINISHED and got["103"].exit_code == 0
    assert got["104"].reason == "NonZeroExitCode" and got["104"].state is BatchState.FAILED
    assert got["105"].state is BatchState.TIMEOUT and got["107"].state is BatchState.RUNNING
    assert got["108"].reason == "PartitionTimeLimit"
    assert sp.squeue_names((DATA / "squeue_all.txt").read_text(), {"name|with|bars"}) == {"name|with|bars": "108"}


def test_sacct_samples():
    jobcomp = sp.sacct_statuses((DATA / "sacct_jobcomp.txt").read_text(), None)
    assert jobcomp["104"].exit_code == 3 and jobcomp["105"].state is BatchState.TIMEOUT
    dbd = sp.sacct_statuses((DATA / "sacct_dbd.txt").read_text(), {"201", "202", "203"})
    assert dbd["201"].state is BatchState.CANCELLED and "CANCELLED by 0" in dbd["201"].reason
    assert dbd["202"].state is BatchState.FAILED and dbd["202"].reason == "OutOfMemory"
    assert dbd["203"].state is BatchState.FINISHED  # the last run of a requeued job wins


@pytest.mark.parametrize(
    "message,transient",
    [
        ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)", True),
        ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", True),
        ("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying", True),
        ("sbatch: error: Batch job submission failed: Resource temporarily unavailable", True),
        ("sbatch: error: QOSMaxSubmitJobPerUserLimit", True),
        ("sbatch: error: Batch job submission failed: Invalid partition name specified", False),
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
            False,
        ),
        (
            "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
            False,
        ),
        ("sbatch: error: Batch job submission failed: Invalid qos specification", False),
        ("sbatch: error: something nobody has seen", False),
    ],
)
def test_sbatch_error_classification(message, transient):
    assert classify_error(message, sp.SBATCH_TRANSIENT, sp.SBATCH_PERMANENT) is transient


def _spec(tmp_path, **kw):
    values = dict(
        worker_id=42,
        job_name="he-lab-w000042",
        access_point=tmp_path / "w42",
        nodes=2,
        ranks_per_node=2,
        cores_per_rank=1,
        walltime=3600,
        memory_mb=2000,
        pilot_argv=[sys.executable, "-m", "jumbo", "--access-point", str(tmp_path / "w42")],
        env={"HE_TOKEN_FILE": "/x y/tok"},
    )
    values.update(kw)
    return WorkerSpec(**values)


def test_render_has_every_directive(tmp_path, queue_factory):
    q = queue_factory(
        account="proj1",
        qos="high",
        constraint="haswell",
        reservation="resv1",
        extra_directives=["--exclusive", "#SBATCH --comment=x"],
        env_setup=["module load openmpi", "export OMPI_MCA_btl=^vader"],
        drain_warning=120,
    )
    text = SlurmPlugin(q, RecordedRunner([])).render_script(_spec(tmp_path))
    for needle in [
        "#SBATCH --job-name=he-lab-w000042",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=1:00:00",
        f"--output={tmp_path}/w42/slurm-%j.out",
        f"--error={tmp_path}/w42/slurm-%j.err",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --mem=2000M",
        "#SBATCH --partition=debug",
        "#SBATCH --account=proj1",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=haswell",
        "#SBATCH --reservation=resv1",
        "#SBATCH --exclusive",
        "#SBATCH --comment=x",
        "module load openmpi",
        "export OMPI_MCA_btl=^vader",
        "export HE_TOKEN_FILE='/x y/tok'",
        "srun --mpi=pmix --export=ALL --nodes=2 --ntasks=4",
    ]:
        assert needle in text, needle
    # directives must precede the first command or sbatch ignores them
    first_cmd = min(i for i, l in enumerate(text.splitlines()) if l and not l.startswith("#"))
    assert max(i for i, l in enumerate(text.splitlines()) if l.startswith("#SBATCH")) < first_cmd
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_render_mpirun_and_site_template(tmp_path, queue_factory):
    text = SlurmPlugin(queue_factory(launcher="mpirun"), RecordedRunner([])).render_script(_spec(tmp_path))
    assert "mpirun -np 4 --map-by ppr:2:node" in text and "OMPI_ALLOW_RUN_AS_ROOT=1" in text
    site = tmp_path / "site.sbatch"
    site.write_text("#!/bin/bash\n${directives}\n# site ${job_name}\n${launch}\n")
    text = SlurmPlugin(queue_factory(template=site), RecordedRunner([])).render_script(_spec(tmp_path))
    assert "# site he-lab-w000042" in text and "#SBATCH --nodes=2" in text and "srun --mpi=pmix" in text


def _squeue_argv(ids):
    return ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", sp.SQUEUE_FORMAT]


def test_status_flow_squeue_then_sacct_then_missing(queue_factory):
    ids = ["102", "104", "105", "555"]
    runner = RecordedRunner(
        [
            {"argv": _squeue_argv(ids), "stdout": "102|RUNNING|None|2026-11-22T05:00:42|N/A|a\n"},
            {
                "argv": ["sacct", "-X", "-n", "-P", "..."],
                "returncode": 1,
                "stderr": "Slurm accounting storage is disabled\n",
            },
            {
                "argv": ["sacct", "-c", "-X", "-n", "-P", "-o", sp.SACCT_FIELDS, "-j", "104,105,555"],
                "stdout": (DATA / "sacct_jobcomp.txt").read_text(),
            },
            # second cycle: straight to sacct -c, and squeue's error for ids it does not know at all
            {
                "argv": _squeue_argv(["104"]),
                "returncode": 1,
                "stderr": "slurm_load_jobs error: Invalid job id specified\n",
            },
            {"argv": ["sacct", "-c", "..."], "stdout": (DATA / "sacct_jobcomp.txt").read_text()},
        ]
    )
    plugin = SlurmPlugin(queue_factory(), runner)
    got = plugin.status(ids)
    assert {k: v.state for k, v in got.items()} == {
        "102": BatchState.RUNNING,
        "104": BatchState.FAILED,
        "105": BatchState.TIMEOUT,
        "555": BatchState.MISSING,
    }
    assert plugin.status(["104"])["104"].exit_code == 3
    assert runner.remaining == 0


def test_status_raises_transient_when_controller_is_down(queue_factory):
    runner = RecordedRunner(
        [
            {
                "argv": ["squeue", "..."],
                "returncode": 1,
                "stderr": "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
            }
        ]
    )
    with pytest.raises(BatchError) as err:
        SlurmPlugin(queue_factory(), runner).status(["1"])
    assert err.value.transient and "squeue" in str(err.value)


def test_cancel_parses_per_job_errors(queue_factory):
    runner = RecordedRunner(
        [
            {
                "argv": ["scancel", "1", "2", "3"],
                "returncode": 1,
                "stderr": "scancel: error: Kill job error on job id 2: Invalid job id specified\n"
                "scancel: error: Kill job error on job id 3: Access/permission denied\n",
            }
        ]
    )
    assert SlurmPlugin(queue_factory(), runner).cancel(["1", "2", "3"]) == {
        "1": None,
        "2": None,
        "3": "Access/permission denied",
    }


def test_recorded_1000_held_jobs():
    text = (DATA / "squeue_1000_held.txt").read_text()
    ids = [line.split("|")[0] for line in text.splitlines()]
    runner = RecordedRunner([{"argv": _squeue_argv(ids), "stdout": text}])
    got = SlurmPlugin(make_queue_for_parse(), runner).status(ids)
    assert len(got) == 1000 and {s.state for s in got.values()} == {BatchState.QUEUED}
    assert {s.reason for s in got.values()} == {"JobHeldUser"}


def make_queue_for_parse():
    from harvester_edge.config import QueueConfig

    return QueueConfig(name="debug", batch="slurm", partition="debug")


def test_cancel_raises_transient_when_controller_is_down(queue_factory):
    runner = RecordedRunner(
        [
            {
                "argv": ["scancel", "5"],
                "returncode": 1,
                "stderr": "scancel: error: Kill job error on job id 5: Unable to contact slurm controller (connect failure)\n",
            }
        ]
    )
    with pytest.raises(BatchError) as err:
        SlurmPlugin(queue_factory(), runner).cancel(["5"])
    assert err.value.transient


def test_idle_nodes_for_backfill(queue_factory, caplog):
    """sinfo's idle-node counts (one line per node group) add up; garbage or a failure means 'unknown', never
    an exception: backfill shaping is an optimisation."""
    runner = RecordedRunner(
        [
            {"argv": ["sinfo", "-h", "-p", "debug", "-t", "idle", "-o", "%D"], "stdout": "2\n1\n"},
            {"argv": ["sinfo", "..."], "stdout": "<html>proxy error</html>\n"},
            {"argv": ["sinfo", "..."], "returncode": 1, "stderr": "Unable to contact slurm controller\n"},
            {"argv": ["sinfo", "..."], "stdout": ""},
        ]
    )
    plugin = SlurmPlugin(queue_factory(partition="debug"), runner)
    with caplog.at_level(logging.WARNING):
        assert [plugin.idle_nodes() for _ in range(4)] == [3, None, None, 0]
    assert "sinfo printed something other than node counts" in caplog.text
    assert runner.remaining == 0
