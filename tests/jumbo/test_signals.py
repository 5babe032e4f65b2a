"""Signals at the end of a pilot's life."""

from __future__ import annotations

import subprocess
import sys


def test_a_drain_signal_after_the_pilot_finished_does_not_kill_the_rank():
    """Slurm may deliver --signal up to a minute early: when it lands while the finished pilot tears down (MPI
    finalize, after Python restored default handlers), USR1's default action would turn a clean end into FAILED."""
    code = (
        "import os, signal, sys, jumbo.pilot as p\n"
        "p._run = lambda argv: 0\n"
        "rc = p.main([])\n"
        "assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN\n"
        "os.kill(os.getpid(), signal.SIGUSR1); os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
