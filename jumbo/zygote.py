"""A payload child forked before MPI starts: the first range does not wait for a new Python to start (~0.2-0.3 s
on a busy node). Forking later is unsafe (MPI and threads); this fork happens while the rank is one plain thread.

The object looks like the bit of subprocess.Popen that jumbo.execute uses (stdin, stdout, pid, poll, wait, kill).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from jumbo.child import main


def rank_before_mpi(env: Mapping[str, str] | None = None) -> int:
    """The MPI rank from the launcher's environment (mpirun, srun --mpi=pmix), before MPI is initialised."""
    environ: Mapping[str, str] = os.environ if env is None else env
    for key in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        if environ.get(key, "").isdigit():
            return int(environ[key])
    return 0


class ForkedChild:
    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int):
        self.pid = pid
        self.stdin = os.fdopen(stdin_fd, "wb")
        self.stdout = os.fdopen(stdout_fd, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if timeout is not None:  # only used for a polite stop: poll, then let the caller kill
                end = time.monotonic() + timeout
                while (code := self.poll()) is None:
                    if time.monotonic() >= end:
                        raise subprocess.TimeoutExpired(["jumbo.child(forked)"], timeout)
                    time.sleep(0.01)
                return code
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fork_payload_child(log_path: str | None) -> ForkedChild | None:
    """Fork a jumbo.child now (call before MPI and before any thread starts); None if fork is unavailable."""
    if not hasattr(os, "fork"):
        return None
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_path else None
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.setsid()  # out of the launcher's process group, like subprocess' start_new_session
            os.dup2(to_child_r, 0)
            os.dup2(from_child_w, 1)
            if log_fd is not None:
                os.dup2(log_fd, 2)
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w, log_fd):
                if fd is not None and fd > 2:
                    os.close(fd)
            for key in [k for k in os.environ if k.startswith(("OMPI_", "PMIX_", "PMI_"))]:
                del os.environ[key]  # this process only: a payload is not a rank
            for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(key, "1")

            code = main()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    if log_fd is not None:
        os.close(log_fd)
    return ForkedChild(pid, to_child_w, from_child_r)
