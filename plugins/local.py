"""Local plugin: a worker is a detached process tree on this machine (laptops, CI, the demo).

Each worker runs `setsid -f bash local-run.sh` in its access point. The wrapper writes its own state files there
(local.pid, local.start, local.exit), wraps the worker script with `timeout` for the walltime, and its session
survives the daemon: a restarted plugin reads the state back from the files. batch_id = "local:<access point>".
find_by_name looks job names up in a registry directory of symlinks (name -> access point).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from harvester_edge.batch import (
    BatchError,
    BatchPlugin,
    BatchState,
    SubmitResult,
    WorkerSpec,
    WorkerStatus,
)
from harvester_edge.plugins import _render
from harvester_edge.seams.commands import CommandNotFound, CommandRunner
from harvester_edge.seams.files import PilotFiles

if TYPE_CHECKING:
    from harvester_edge.config import QueueConfig

log = logging.getLogger(__name__)

PREFIX = "local:"
SCRIPT_NAME = "worker.sh"
WRAPPER_NAME = "local-run.sh"
KILL_GRACE = 5.0  # seconds between TERM and KILL, for cancel and for the walltime


def default_registry(queue_name: str) -> Path:
    base = os.environ.get("HE_LOCAL_BATCH_DIR") or os.path.join(
        tempfile.gettempdir(), f"harvester-edge-local-{os.getuid()}"
    )
    return Path(base) / queue_name


def render_wrapper(spec: WorkerSpec, grace: float = KILL_GRACE) -> str:
    """The detached wrapper: records pid/start/exit in the access point, kills the worker at its walltime."""
    ap = shlex.quote(str(spec.access_point))
    return f"""#!/bin/bash
# harvester-edge local worker {spec.worker_id} ({spec.job_name}): state files for a daemon that may restart
cd {ap} || exit 97
exec >local.out 2>local.err </dev/null
echo $$ > local.pid.tmp && mv local.pid.tmp local.pid
date +%s.%N > local.start
# cancel writes local.cancel BEFORE reading local.pid: one of the two always sees the other
if [ -e local.cancel ]; then echo 143 > local.exit.tmp && mv local.exit.tmp local.exit; exit 143; fi
timeout --kill-after={int(grace)} {int(spec.walltime)} bash {SCRIPT_NAME} &
tpid=$!
wait "$tpid"; rc=$?
# timeout leads its own process group: reap what the worker left behind (TERM, grace, KILL) before the exit file
if kill -0 -- -"$tpid" 2>/dev/null; then
    kill -TERM -- -"$tpid" 2>/dev/null
    for _ in $(seq 1 {int(grace * 10)}); do kill -0 -- -"$tpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- -"$tpid" 2>/dev/null
fi
echo "$rc" > local.exit.tmp && mv local.exit.tmp local.exit
exit "$rc"
"""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _session_members(sid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


class LocalPlugin(BatchPlugin):
    name = "local"

    def __init__(
        self, queue: QueueConfig, runner: CommandRunner, files: PilotFiles | None = None, registry: Path | None = None
    ) -> None:
        super().__init__(queue, runner, files)
        self.registry = registry or default_registry(queue.name)

    # ---- render -------------------------------------------------------------------------------------------
    def render_script(self, spec: WorkerSpec) -> str:
        ranks = spec.nodes * spec.ranks_per_node
        launcher = self.queue.launcher
        if launcher != "none" and ranks > 1:
            pilot = " ".join(shlex.quote(a) for a in spec.pilot_argv) or "true"
            launch = f"{_render.root_mpi_env()}\nmpirun --oversubscribe -np {ranks} {pilot}"
        else:
            launch = _render.launch_line(self.queue, spec, "none")
        template = _render.load_template(self.queue, "local.sh")
        return _render.render(
            template,
            spec,
            [],
            list(self.queue.env_setup),
            launch,
            self.queue.drain_warning,
        )

    # ---- submit -------------------------------------------------------------------------------------------
    def submit(self, specs: Sequence[WorkerSpec]) -> list[SubmitResult]:
        results = []
        for spec in specs:
            ap = spec.access_point
            try:
                for stale in ("local.pid", "local.start", "local.exit", "local.cancel"):
                    (ap / stale).unlink(missing_ok=True)
                self.files.write_script(ap, SCRIPT_NAME, self.render_script(spec))
                wrapper = self.files.write_script(ap, WRAPPER_NAME, render_wrapper(spec))
                self._register(spec)
            except Exception as exc:
                results.append(SubmitResult(spec.worker_id, None, f"cannot prepare {ap}: {exc}", False))
                continue
            try:
                # setsid -f: a new session, re-parented to init, so the worker outlives the daemon
                res = self.runner.run(["setsid", "-f", "bash", str(wrapper)], timeout=self.timeout, cwd=str(ap))
            except CommandNotFound as exc:
                results.append(SubmitResult(spec.worker_id, None, str(exc), False))
                continue
            if not res.ok:
                results.append(
                    SubmitResult(
                        spec.worker_id,
                        None,
                        f"cannot start local worker {spec.job_name}: {res.stderr.strip() or 'timed out'}",
                        True,
                    )
                )
                continue
            log.info("worker %d: started locally in %s", spec.worker_id, ap)
            results.append(SubmitResult(spec.worker_id, PREFIX + str(ap), None))
        return results

    def _register(self, spec: WorkerSpec) -> None:
        self.registry.mkdir(parents=True, exist_ok=True)
        link = self.registry / spec.job_name
        tmp = self.registry / f".{spec.job_name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(spec.access_point.resolve())
        tmp.replace(link)

    # ---- status -------------------------------------------------------------------------------------------
    @staticmethod
    def _access_point(batch_id: str) -> Path:
        if not batch_id.startswith(PREFIX):
            raise BatchError(f"{batch_id!r} is not a local batch id (expected {PREFIX}<access point>)", transient=False)
        return Path(batch_id[len(PREFIX) :])

    @staticmethod
    def _alive(ap: Path) -> int | None:
        """The wrapper's pid when it still runs (guarding against a reused pid by its start time)."""
        pid_text, start_text = _read(ap / "local.pid"), _read(ap / "local.start")
        if not pid_text:
            return None
        try:
            proc = psutil.Process(int(pid_text))
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if start_text and abs(proc.create_time() - float(start_text)) > 5:
                return None
            return proc.pid
        except (ValueError, psutil.Error):
            return None

    def worker_status(self, batch_id: str) -> WorkerStatus:
        ap = self._access_point(batch_id)
        if not ap.is_dir():
            return WorkerStatus(batch_id, BatchState.MISSING, "", f"access point {ap} is gone")
        # read in the order the wrapper writes: start, then liveness, then the exit file. A wrapper seen ended
        # wrote its exit file first, so the read after finds it (the other way round, one ending in between looked
        # lost: no exit code, no process); one that starts after the first read is running or ended, not lost
        start = _read(ap / "local.start")
        start_time = float(start) if start else None
        alive = self._alive(ap)
        exit_text = _read(ap / "local.exit")
        cancelled = (ap / "local.cancel").exists()
        if exit_text is not None:
            end_time = (ap / "local.exit").stat().st_mtime
            code = int(exit_text) if exit_text.lstrip("-").isdigit() else None
            if cancelled:
                return WorkerStatus(
                    batch_id, BatchState.CANCELLED, "cancelled", "cancelled", code, start_time, end_time
                )
            if code == 0:
                return WorkerStatus(batch_id, BatchState.FINISHED, "exited", "", 0, start_time, end_time)
            walltime_hit = start_time is not None and end_time - start_time >= self._walltime(ap) - 1
            if code == 124 or (code == 137 and walltime_hit):
                return WorkerStatus(
                    batch_id, BatchState.TIMEOUT, "timeout", "walltime reached", code, start_time, end_time
                )
            return WorkerStatus(batch_id, BatchState.FAILED, "exited", f"exit code {code}", code, start_time, end_time)
        if alive is not None:
            return WorkerStatus(batch_id, BatchState.RUNNING, "running", "", None, start_time)
        if cancelled:
            return WorkerStatus(batch_id, BatchState.CANCELLED, "cancelled", "cancelled", None, start_time)
        if start is None and (ap / WRAPPER_NAME).exists() and time.time() - (ap / WRAPPER_NAME).stat().st_mtime < 30:
            return WorkerStatus(batch_id, BatchState.QUEUED, "starting", "wrapper not started yet")
        return WorkerStatus(
            batch_id,
            BatchState.FAILED,
            "lost",
            "the worker process died without an exit code (killed, or the machine rebooted)",
            None,
            start_time,
        )

    @staticmethod
    def _walltime(ap: Path) -> float:
        for line in (_read(ap / WRAPPER_NAME) or "").splitlines():
            if line.startswith("timeout "):  # timeout --kill-after=G <walltime> ...
                return float(line.split()[2])
        return float("inf")

    def status(self, batch_ids: Sequence[str]) -> dict[str, WorkerStatus]:
        return {b: self.worker_status(b) for b in dict.fromkeys(batch_ids)}

    # ---- cancel -------------------------------------------------------------------------------------------
    def cancel(self, batch_ids: Sequence[str], grace: float = KILL_GRACE) -> dict[str, str | None]:
        """TERM every process of each worker's session, then KILL what is left after `grace` seconds."""
        out: dict[str, str | None] = {}
        sessions: dict[str, int] = {}
        for batch_id in dict.fromkeys(batch_ids):
            ap = self._access_point(batch_id)
            out[batch_id] = None
            if not ap.is_dir() or (ap / "local.exit").exists():
                continue  # gone or already ended: nothing to cancel
            (ap / "local.cancel").write_text(f"{time.time()}\n")  # first: a wrapper not yet started sees it
            pid = self._alive(ap)
            if pid is None:
                continue
            sessions[batch_id] = pid
            for proc in _session_members(pid):
                try:
                    proc.send_signal(signal.SIGTERM)
                except psutil.Error:
                    pass
        deadline = time.monotonic() + grace
        while sessions and time.monotonic() < deadline:
            if not any(_session_members(sid) for sid in sessions.values()):
                return out
            time.sleep(0.1)
        for batch_id, sid in sessions.items():
            for proc in _session_members(sid):
                try:
                    proc.kill()
                    log.info("worker %s: process %d ignored TERM for %.0f s: killed", batch_id, proc.pid, grace)
                except psutil.Error:
                    pass
        return out

    # ---- crash recovery -----------------------------------------------------------------------------------
    def find_by_name(self, job_names: Sequence[str]) -> dict[str, str]:
        found = {}
        for name in dict.fromkeys(job_names):
            link = self.registry / name
            if link.is_symlink() and link.resolve().is_dir() and (link.resolve() / WRAPPER_NAME).exists():
                found[name] = PREFIX + str(link.resolve())
        return found
