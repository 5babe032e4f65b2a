"""The Slurm plugin against the real local cluster (scripts/slurm-cluster): every path issue 4 asks for.

The walltime (TIMEOUT + drain signal) job is submitted when the module starts and checked by the LAST test, so its
minute overlaps the others.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from doubles import ListTrace
from harvester_edge.batch import TERMINAL, BatchState, WorkerSpec
from harvester_edge.plugins.slurm import SlurmPlugin
from harvester_edge.replay.recorder import RecordingRunner
from harvester_edge.seams.commands import CommandResult, CommandRunner

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:8]

MPI_HELLO = """
import os
from mpi4py import MPI
comm = MPI.COMM_WORLD
names = comm.gather(os.environ.get("SLURMD_NODENAME", "?"), root=0)
total = comm.allreduce(comm.rank)
if comm.rank == 0:
    print(comm.size, total, ",".join(sorted(set(names))))
"""
DRAIN_PILOT = """
import pathlib, signal, sys, time
ap = pathlib.Path(sys.argv[1])
signal.signal(signal.SIGUSR1, lambda *a: (ap / "drained").write_text(str(time.time())))
time.sleep(600)
"""


def spec(base: Path, wid: int, argv: list[str], nodes: int = 1, ranks: int = 1, walltime: int = 300) -> WorkerSpec:
    # the name carries the worker id and a per-run token: reruns on a kept cluster do not collide
    return WorkerSpec(wid, f"he-test-{RUN}-w{wid:06d}", base / f"w{wid}", nodes, ranks, 1, walltime, None, argv, {})


def poll(plugin: SlurmPlugin, batch_id: str, until, limit: float = 60.0):
    deadline = time.monotonic() + limit
    status = None
    while time.monotonic() < deadline:
        status = plugin.status([batch_id])[batch_id]
        if until(status):
            return status
        time.sleep(0.25)
    raise AssertionError(f"job {batch_id}: condition not met in {limit} s, last status {status}")


def in_squeue(runner: CommandRunner, batch_id: str) -> bool:
    res = runner.run(["squeue", "-h", "-t", "all", "-j", batch_id, "-o", "%i"])
    return res.ok and batch_id in res.stdout.split()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-live")


@pytest.fixture(scope="module")
def plugin(slurm_runner, queue_factory_module) -> SlurmPlugin:
    return SlurmPlugin(queue_factory_module(), slurm_runner)


@pytest.fixture(scope="module")
def queue_factory_module():
    from harvester_edge.config import QueueConfig

    def make(**kw):
        values = dict(
            name="debug",
            batch="slurm",
            partition="debug",
            nodes_max=4,
            ranks_per_node=1,
            cores_per_node=1,
            walltime_min=60,
            walltime_max=3600,
            launcher="srun",
            drain_warning=30,
            command_timeout=30,
            env_setup=["export OMPI_MCA_btl=^vader", "export OMPI_MCA_btl_tcp_if_include=lo"],
        )
        values.update(kw)
        return QueueConfig(**values)

    return make


@pytest.fixture(scope="module", autouse=True)
def walltime_job(slurm_conf, base, queue_factory_module):
    """Submitted first, checked by the last test, on a cluster of its own: Slurm sends --signal from the
    controller's timer, and a restart of a shared controller by another tier would lose it."""
    with own_cluster() as (conf, _):
        plugin = SlurmPlugin(queue_factory_module(), CommandRunner(env={"SLURM_CONF": conf}))
        s = spec(base, 900, [sys.executable, "-c", DRAIN_PILOT, str(base / "w900")], walltime=60)
        [res] = plugin.submit([s])
        assert res.ok, res.error
        yield plugin, s, res.batch_id


@pytest.mark.mpi
def test_mpi_on_two_nodes(plugin, base, mpi4py_ok):
    s = spec(base, 1, [sys.executable, "-c", MPI_HELLO], nodes=2, ranks=2)
    [res] = plugin.submit([s])
    assert res.ok and (s.access_point / "worker.sbatch").exists()
    status = poll(plugin, res.batch_id, lambda st: st.state in TERMINAL, 90)
    out = (s.access_point / f"slurm-{res.batch_id}.out").read_text()
    err = (s.access_point / f"slurm-{res.batch_id}.err").read_text()
    assert status.state is BatchState.FINISHED, err
    size, total, nodes = out.split()
    assert (int(size), int(total)) == (4, 6) and len(nodes.split(",")) == 2


def test_status_through_squeue_then_sacct(slurm_conf, base, queue_factory_module):
    trace = ListTrace()
    runner = RecordingRunner(CommandRunner(env={"SLURM_CONF": slurm_conf}), trace)
    plugin = SlurmPlugin(queue_factory_module(), runner)
    ok, bad = plugin.submit([spec(base, 2, ["true"]), spec(base, 3, ["bash", "-c", "exit 3"])])
    assert ok.ok and bad.ok
    both = [ok.batch_id, bad.batch_id]
    first = poll(plugin, ok.batch_id, lambda st: st.state in TERMINAL)
    assert first.state is BatchState.FINISHED and in_squeue(runner, ok.batch_id)  # seen through squeue
    poll(plugin, bad.batch_id, lambda st: st.state in TERMINAL)
    deadline = time.monotonic() + 90
    while any(in_squeue(runner, b) for b in both):  # MinJobAge (10 s here) + the purge tick
        assert time.monotonic() < deadline, "jobs never left squeue"
        time.sleep(1)
    plugin.status(both)  # the first sacct finds out once that there is no slurmdbd here (then sacct -c)
    trace.records.clear()
    got = plugin.status(both + ["987654"])
    assert got[ok.batch_id].state is BatchState.FINISHED and got[ok.batch_id].exit_code == 0
    assert got[bad.batch_id].state is BatchState.FAILED and got[bad.batch_id].exit_code == 3
    assert got["987654"].state is BatchState.MISSING
    argvs = [r["argv"] for r in trace.records]
    assert [a[0] for a in argvs] == ["squeue", "sacct"] and "-c" in argvs[1]  # one call each
    ok_name = spec(base, 2, []).job_name
    assert plugin.find_by_name([ok_name]) == {ok_name: ok.batch_id}  # crash recovery through sacct -c


def test_find_by_name_after_jobs_left_squeue(plugin, base, slurm_runner):
    s = spec(base, 4, ["true"])
    [res] = plugin.submit([s])
    assert plugin.find_by_name([s.job_name, "he-never-submitted"]) == {s.job_name: res.batch_id}  # in squeue
    poll(plugin, res.batch_id, lambda st: st.state in TERMINAL)
    deadline = time.monotonic() + 90
    while in_squeue(slurm_runner, res.batch_id):  # MinJobAge (10 s here) + the purge tick
        assert time.monotonic() < deadline, "the job never left squeue"
        time.sleep(1)
    assert plugin.find_by_name([s.job_name, "he-never-submitted"]) == {s.job_name: res.batch_id}


def test_cancel(plugin, base):
    [res] = plugin.submit([spec(base, 5, ["sleep", "300"])])
    poll(plugin, res.batch_id, lambda st: st.state is BatchState.RUNNING)
    assert plugin.cancel([res.batch_id]) == {res.batch_id: None}
    status = poll(plugin, res.batch_id, lambda st: st.state in TERMINAL, 30)
    assert status.state is BatchState.CANCELLED


def test_permanent_errors(plugin, base, slurm_runner, queue_factory_module):
    [bad_partition] = SlurmPlugin(queue_factory_module(partition="nope"), slurm_runner).submit(
        [spec(base, 6, ["true"])]
    )
    assert bad_partition.batch_id is None and not bad_partition.transient
    assert "Invalid partition name" in bad_partition.error
    [too_long] = SlurmPlugin(queue_factory_module(partition="short"), slurm_runner).submit(
        [spec(base, 7, ["true"], walltime=600)]
    )  # partition short: MaxTime=2 minutes
    assert too_long.batch_id is None and not too_long.transient and "time limit" in too_long.error


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def own_cluster():
    """A one-node cluster of our own (other dir and ports): other tiers restart the shared slurmctld (and we stop
    this one) without disturbing each other."""
    env = dict(
        os.environ,
        HE_SLURM_DIR=tempfile.mkdtemp(prefix="he-slurm-private-"),
        HE_SLURM_NODES="1",
        HE_SLURM_CTLD_PORT=str(_free_port()),
        HE_SLURM_NODE_PORT_BASE=str(_free_port() - 1),
    )
    script = str(REPO / "scripts" / "slurm-cluster")

    def run(*args):
        res = subprocess.run([script, *args], capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0, f"slurm-cluster {args}: {res.stderr[-2000:]}"
        return res

    conf = run("up").stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield conf, run
    finally:
        run("down")
        shutil.rmtree(env["HE_SLURM_DIR"], ignore_errors=True)


@pytest.fixture
def private_cluster(slurm_conf):
    with own_cluster() as cluster:
        yield cluster


def test_transient_error_when_controller_is_down(private_cluster, base, queue_factory_module):
    conf, cluster = private_cluster
    plugin = SlurmPlugin(queue_factory_module(), CommandRunner(env={"SLURM_CONF": conf}))
    s = spec(base, 8, ["true"])
    cluster("stop-ctld")
    try:
        [res] = plugin.submit([s])
        assert res.batch_id is None and res.transient, res
        assert "Unable to contact slurm controller" in res.error
    finally:
        cluster("start-ctld")
    assert plugin.find_by_name([s.job_name]) == {}  # nothing was submitted: safe to retry
    [retry] = plugin.submit([s])
    assert retry.ok
    assert poll(plugin, retry.batch_id, lambda st: st.state in TERMINAL).state is BatchState.FINISHED


def test_cluster_script_up_is_idempotent_and_status_reports(slurm_conf):
    script = str(REPO / "scripts" / "slurm-cluster")
    again = subprocess.run([script, "up"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already up" in again.stderr
    assert again.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={slurm_conf}"
    status = subprocess.run([script, "status"], capture_output=True, text=True, timeout=60).stdout
    assert status.count("slurmd-n") == 4 and "stopped" not in status and "slurmctld: running" in status


def test_walltime_timeout_with_drain_signal(walltime_job):
    plugin, s, batch_id = walltime_job
    status = poll(plugin, batch_id, lambda st: st.state in TERMINAL, 150)
    assert status.state is BatchState.TIMEOUT, status
    assert (s.access_point / "drained").exists(), "the pilot never got the drain signal (USR1)"


def test_idle_nodes_match_sinfo_per_node(slurm_runner, queue_factory_module):
    """The backfill count agrees with sinfo's per-node listing of the same partition (read back to back;
    retried when a job of another test starts or ends in between)."""
    plugin = SlurmPlugin(queue_factory_module(partition="debug"), slurm_runner)
    for _ in range(5):
        idle = plugin.idle_nodes()
        listed = slurm_runner.run(["sinfo", "-N", "-h", "-p", "debug", "-t", "idle", "-o", "%N"]).stdout.split()
        if idle == len(set(listed)):
            break
    assert isinstance(idle, int) and 0 <= idle <= 4
    assert idle == len(set(listed))
