"""The jumbo pilot: ``jumbo --ap DIR`` (or ``python -m jumbo``) under mpirun/srun, one process per rank.

Rank 0 reads the job spec from the access point and broadcasts it, runs the dispatcher on a thread and works
through ranges like every other rank. Exit code: 0 when the pilot ended normally (whatever its ranges' fate),
1 on a pilot error (bad job spec, dispatcher failure), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from jumbo import paylog, protocol
from jumbo.channel import LocalChannel, MPIChannel, polite_barrier
from jumbo.dispatcher import Dispatcher
from jumbo.execute import PayloadRunner
from jumbo.monitor import Monitor
from jumbo.results import Reporter
from jumbo.sources import make_source
from jumbo.walltime import resolve_end_time
from jumbo.worker import Worker
from jumbo.zygote import fork_payload_child, rank_before_mpi

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jumbo", description="MPI event-range pilot (see jumbo.protocol)")
    p.add_argument("--ap", required=True, type=Path, help="the worker's access point (shared directory)")
    p.add_argument("--end-time", help="epoch seconds or +SECONDS from now; overrides the job spec and Slurm")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--no-fsync", action="store_true", help="do not fsync range outputs before reporting them")
    return p.parse_args(argv)


def _setup_logging(level: str, rank: int) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s rank{rank} %(threadName)s %(name)s %(levelname)s %(message)s",
    )


def _install_signals(drain: threading.Event) -> None:
    def handler(signum, _frame):  # only a flag: the loops act on it
        drain.set()

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)


def _read_spec(comm, ap: Path, rank: int, end_option: str | None, started: float):
    """(spec, error, end time) on every rank: rank 0 reads them while the others wait without spinning."""
    spec = error = end_time = None
    if rank == 0:
        try:
            spec = protocol.read_job_spec(ap)
        except (protocol.ProtocolError, OSError) as exc:
            error = f"cannot start: {exc}"
            log.error("%s; fix the job spec and submit again", error)
            try:
                protocol.write_worker_attributes(
                    ap, {"workerStatus": "failed", "pilotErrorCode": 1, "pilotErrorDiag": error, "jobs": {}}
                )
            except OSError:
                log.exception("cannot write %s either", protocol.ATTRIBUTES)
        if spec is not None:
            settings = spec["pilot"]
            end_time = resolve_end_time(
                end_option, settings.get("end_time"), walltime=settings.get("walltime"), started=started
            )
    polite_barrier(comm)
    return comm.bcast((spec, error, end_time), root=0)


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    # The work is done and reported. A drain signal now (Slurm may send --signal up to 60 s early, an operator may
    # scancel) must not kill the rank while MPI finalizes: Python puts back the default handlers at exit, and the
    # default action of SIGUSR1/SIGTERM is to terminate, which the batch system then reports as a failed job.
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    return code


def _run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    # fork the payload child while this is still one thread without MPI (see jumbo.zygote)
    (args.ap / "logs").mkdir(parents=True, exist_ok=True)
    spare = fork_payload_child(str(args.ap / "logs" / f"payload.{rank_before_mpi()}.log"))
    from mpi4py import MPI  # initialises MPI: not at import time, so `jumbo --help` works anywhere

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    _setup_logging(args.log_level, rank)
    drain = threading.Event()
    _install_signals(drain)
    started = time.time()
    spec, error, end_time = _read_spec(comm, args.ap, rank, args.end_time, started)
    if error:
        if spare is not None:
            spare.stdin.close()
            spare.wait()
        return 1
    settings = spec["pilot"]
    deadline = None if end_time is None else end_time - float(settings["safety_margin"])
    jobs = {int(j["PandaID"]): j for j in spec["jobs"]}
    prefetch = int(settings["prefetch"])

    monitor = Monitor(args.ap / protocol.MONITOR.format(rank=rank), rank, settings["monitor_interval"]).start()
    runner = PayloadRunner(
        rank,
        args.ap / "logs" / f"payload.{rank}.log",
        fsync_outputs=not args.no_fsync,
        spare=spare,
        looping_timeout=settings["looping_timeout"],
        payload_log=paylog.settings_for(str(args.ap / "logs"), rank, settings.get("payload_log_max_mb")),
    )
    maxima: dict = {}
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()  # fake Slurm nodes share one hostname

    def metrics() -> dict:
        maxima.update(monitor.stop())
        return {
            "maxRSS": maxima["rss"],
            "maxPSS": maxima["pss"],
            "maxVMEM": maxima["vmem"],
            "rankCpuTime": maxima["utime"] + maxima["stime"],
            "readBytes": maxima["read_bytes"],
            "writeBytes": maxima["write_bytes"],
            "node": node,
        }

    dispatcher = None
    channel: LocalChannel | MPIChannel
    if rank == 0:
        n_ranges = settings["n_ranges"] or 2 * size * (prefetch + 1)
        source = make_source(args.ap, jobs, settings, n_ranges)
        reporter = Reporter(args.ap, jobs, source, settings["status_flush_interval"])
        channel = LocalChannel()
        dispatcher = Dispatcher(comm, channel, args.ap, source, reporter, settings, deadline, drain, prefetch)
        dispatcher.thread.start()
    else:
        channel = MPIChannel(comm, rank)
    try:
        Worker(channel, rank, args.ap, jobs, runner, prefetch, deadline, drain, metrics, monitor.take_pss_peak).run()
    except Exception as exc:
        if dispatcher is None:
            raise  # the traceback ends this rank, and with it the MPI job
        log.exception("rank 0: work loop failed; the other ranks are stopped, the pilot reports failure")
        dispatcher.fatal = f"rank 0 work loop failed: {type(exc).__name__}: {exc}"
        dispatcher.drain.set()
        channel.send({"kind": "bye", "rank": 0, "results": [], "metrics": {}})  # its ranges become not-done
    finally:
        if dispatcher is None:
            runner.close()
    if dispatcher is None:
        polite_barrier(comm)  # wait for rank 0's final reports without spinning (MPI_Finalize would)
        return 0
    try:
        return _finish(dispatcher, source, reporter, started, size)
    finally:
        polite_barrier(comm)
        runner.close()  # after the reports: stopping the payload children takes a moment


def _finish(dispatcher, source, reporter, started: float, size: int) -> int:
    """Rank 0, after its own work loop: wait for the dispatcher, then write the final reports."""
    dispatcher.thread.join()
    if hasattr(source, "flush_pending") and not source.flush_pending():
        dispatcher.fatal = dispatcher.fatal or "could not send the last event statuses to the central service"
    errors = list(source.errors)
    reporter.finalize(dispatcher.metrics, started, dispatcher.end_reason, dispatcher.fatal, errors, size)
    dispatcher._heartbeat(time.time(), "finished")
    log.info("pilot done in %.1f s: %s (%s)", time.time() - started, reporter.totals(), dispatcher.end_reason)
    return 1 if dispatcher.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
