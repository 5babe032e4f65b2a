"""When must the pilot stop: its end time (option > job spec > batch system) and the measured time per range."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def parse_end_time(value: str | float | None, now: float | None = None) -> float | None:
    """An epoch time, or '+SECONDS' relative to now; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.startswith("+"):
        return (now if now is not None else time.time()) + float(value[1:])
    return float(value)


def resolve_end_time(
    option: str | None,
    spec_value: float | None,
    env: Mapping[str, str] | None = None,
    walltime: float | None = None,
    started: float | None = None,
) -> float | None:
    """The pilot's end time: --end-time, else the job spec's end_time, else SLURM_JOB_END_TIME (newer Slurm;
    22.05 does not set it), else the spec's ``walltime`` counted from the pilot's start.

    The batch job starts a little before the pilot, so with ``walltime`` the safety margin must cover that delay.
    The robust way on any batch system is a warning signal: ``sbatch --signal=USR1@300`` (srun steps get it) or
    LSF's ``bsub -wa USR1 -wt 5``: SIGUSR1 starts the drain at once.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    relative = None if walltime is None else (started if started is not None else time.time()) + float(walltime)
    for source, value in (
        ("--end-time", option),
        ("job spec", spec_value),
        ("SLURM_JOB_END_TIME", environ.get("SLURM_JOB_END_TIME")),
        ("job spec walltime from the pilot's start", relative),
    ):
        end = parse_end_time(value)
        if end is not None:
            log.info("end time %.0f (in %.0f s) from %s", end, end - time.time(), source)
            return end
    log.info("no end time given: the pilot runs until no ranges are left or a drain is asked for")
    return None


class RangeTimer:
    """Running mean of range wall times; ``fits`` says whether one more range ends before the deadline."""

    def __init__(self) -> None:
        self.count, self.total = 0, 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def fits(self, now: float, deadline: float | None) -> bool:
        return deadline is None or now + self.mean <= deadline
