"""Slurm: sbatch / squeue / sacct / scancel through the CommandRunner seam.

Status is ONE `squeue -t all -j <ids>` (it also lists jobs that ended less than MinJobAge ago, like
`scontrol show job`), then ONE `sacct` for the ids squeue no longer shows: `sacct -X` with slurmdbd, or `sacct -c`
(JobCompType=jobcomp/filetxt) when accounting storage is disabled — detected once from sacct's own error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harvester_edge.batch import (
    BatchError,
    BatchState,
    ScriptBatchPlugin,
    SubmitResult,
    WorkerSpec,
    WorkerStatus,
    classify_error,
)
from harvester_edge.plugins import _render
from harvester_edge.plugins import slurm_parse as sp
from harvester_edge.seams.commands import CommandNotFound, CommandResult, CommandRunner
from harvester_edge.seams.files import PilotFiles

if TYPE_CHECKING:
    from harvester_edge.config import QueueConfig

log = logging.getLogger(__name__)

SCRIPT_NAME = "worker.sbatch"


class SlurmPlugin(ScriptBatchPlugin):
    name = "slurm"
    script_name = SCRIPT_NAME

    def __init__(self, queue: QueueConfig, runner: CommandRunner, files: PilotFiles | None = None) -> None:
        super().__init__(queue, runner, files)
        self._jobcomp: bool | None = None  # None: not known yet whether sacct has slurmdbd behind it

    # ---- render -------------------------------------------------------------------------------------------
    def directives(self, spec: WorkerSpec) -> list[str]:
        q = self.queue
        ap = spec.access_point
        lines = [
            f"--job-name={spec.job_name}",
            f"--nodes={spec.nodes}",
            f"--ntasks-per-node={spec.ranks_per_node}",
            f"--cpus-per-task={spec.cores_per_rank}",
            f"--time={sp.format_walltime(spec.walltime)}",
            f"--output={ap}/slurm-%j.out",
            f"--error={ap}/slurm-%j.err",
            f"--chdir={ap}",
            "--export=ALL",
        ]
        drain = q.drain_warning
        if drain > 0:
            # B: the batch shell gets USR1 and forwards it to the launcher (see the template)
            lines.append(f"--signal=B:USR1@{drain}")
        memory = spec.memory_mb or q.memory_mb
        if memory:
            lines.append(f"--mem={int(memory)}M")
        for attr, value in (
            ("partition", q.partition),
            ("account", q.account),
            ("qos", q.qos),
            ("constraint", q.constraint),
            ("reservation", q.reservation),
        ):
            if value:
                lines.append(f"--{attr}={value}")
        out = [f"#SBATCH {line}" for line in lines]
        for extra in q.extra_directives:
            out.append(extra if extra.lstrip().startswith("#") else f"#SBATCH {extra}")
        return out

    def render_script(self, spec: WorkerSpec) -> str:
        template = _render.load_template(self.queue, "slurm.sbatch")
        return _render.render(
            template,
            spec,
            self.directives(spec),
            list(self.queue.env_setup),
            _render.launch_line(self.queue, spec),
            self.queue.drain_warning,
        )

    # ---- submit -------------------------------------------------------------------------------------------
    def submit_args(self, path: Path, text: str) -> tuple[list[str], str | None]:
        return ["sbatch", "--parsable", str(path)], None

    def parse_submit(self, spec: WorkerSpec, res: CommandResult) -> SubmitResult:
        if res.timed_out:
            # sbatch may have reached the controller: the caller must find_by_name before resubmitting
            return SubmitResult(
                spec.worker_id,
                None,
                f"sbatch timed out after {res.duration:.0f} s; the job may "
                f"exist: check find_by_name({spec.job_name!r}) before resubmitting",
                True,
            )
        batch_id = sp.parse_sbatch(res.stdout) if res.returncode == 0 else None
        if batch_id is not None:
            log.info("worker %d: submitted as Slurm job %s (%s)", spec.worker_id, batch_id, spec.job_name)
            return SubmitResult(spec.worker_id, batch_id, None)
        message = res.stderr.strip() or res.stdout.strip() or f"sbatch exited {res.returncode} with no output"
        transient = classify_error(message, sp.SBATCH_TRANSIENT, sp.SBATCH_PERMANENT)
        log.error(
            "worker %d: sbatch failed (%s): %s", spec.worker_id, "transient" if transient else "permanent", message
        )
        return SubmitResult(spec.worker_id, None, f"sbatch failed for {spec.job_name}: {message}", transient)

    # ---- status -------------------------------------------------------------------------------------------
    def idle_nodes(self) -> int | None:
        argv = [
            "sinfo",
            "-h",
            *(["-p", self.queue.partition] if self.queue.partition else []),
            "-t",
            "idle",
            "-o",
            "%D",
        ]
        try:
            res = self.runner.run(argv, timeout=self.timeout)
        except CommandNotFound:
            return None
        try:
            return sum(int(line) for line in res.stdout.split()) if res.ok else None
        except ValueError:
            log.warning(
                "sinfo printed something other than node counts (%r): shaping without backfill", res.stdout[:200]
            )
            return None

    def _squeue(self, ids: list[str]) -> dict[str, WorkerStatus]:
        res = self.run_command(
            ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", sp.SQUEUE_FORMAT], "squeue", failure_expected=True
        )
        if res.returncode != 0 and "Invalid job id" in res.stderr:
            log.debug("squeue knows none of the %d ids any more: all go to sacct", len(ids))
            return {}  # squeue errors when NONE of the ids is known any more: all left the queue
        if not res.ok:
            log.error("squeue failed (exit %d): %s", res.returncode, res.stderr.strip())
            raise BatchError(
                f"squeue for {len(ids)} jobs failed: {res.stderr.strip() or 'timed out'}; "
                f"is slurmctld reachable? retrying next cycle",
                transient=True,
            )
        return sp.squeue_statuses(res.stdout, set(ids))

    def _sacct(self, ids: list[str], extra: list[str]) -> str:
        """stdout of sacct over slurmdbd, or `sacct -c` (jobcomp) when accounting storage is disabled."""
        if not self._jobcomp:
            res = self.run_command(
                ["sacct", "-X", "-n", "-P", "-o", sp.SACCT_FIELDS_REASON, *extra],
                "sacct",
                failure_expected=self._jobcomp is None,
            )
            if res.ok:
                self._jobcomp = False
                return res.stdout
            if "accounting storage is disabled" not in res.stderr:
                raise BatchError(
                    f"sacct for {len(ids)} jobs failed: {res.stderr.strip() or 'timed out'}; "
                    f"is slurmdbd reachable? retrying next cycle",
                    transient=True,
                )
            log.info("sacct: no accounting storage here, using sacct -c (jobcomp) from now on")
            self._jobcomp = True
        res = self.run_command(["sacct", "-c", "-X", "-n", "-P", "-o", sp.SACCT_FIELDS, *extra], "sacct -c")
        if not res.ok:
            raise BatchError(
                f"sacct -c for {len(ids)} jobs failed: {res.stderr.strip() or 'timed out'}; "
                f"check JobCompType/JobCompLoc in slurm.conf",
                transient=True,
            )
        return res.stdout

    def status(self, batch_ids: Sequence[str]) -> dict[str, WorkerStatus]:
        ids = list(dict.fromkeys(str(b) for b in batch_ids))
        if not ids:
            return {}
        found = self._squeue(ids)
        left = [i for i in ids if i not in found]
        if left:
            found.update(sp.sacct_statuses(self._sacct(left, ["-j", ",".join(left)]), set(left)))
        for batch_id in ids:
            if batch_id not in found:
                log.info("job %s: unknown to squeue and sacct, reported MISSING", batch_id)
                found[batch_id] = WorkerStatus(batch_id, BatchState.MISSING, "", "unknown to squeue and sacct")
        return found

    # ---- cancel -------------------------------------------------------------------------------------------
    def cancel(self, batch_ids: Sequence[str]) -> dict[str, str | None]:
        ids = list(dict.fromkeys(str(b) for b in batch_ids))
        if not ids:
            return {}
        res = self.run_command(["scancel", *ids], "scancel")
        out: dict[str, str | None] = {i: None for i in ids}
        if res.ok:
            return out
        errors = dict(re.findall(r"job id (\S+?):\s*(.+)", res.stderr))
        if not errors or any(classify_error(m, sp.SBATCH_TRANSIENT) for m in errors.values()):
            # no per-job answer, or the controller itself is unreachable: the whole call failed
            raise BatchError(
                f"scancel of {len(ids)} jobs failed: {res.stderr.strip() or 'timed out'}; retrying next cycle",
                transient=True,
            )
        for job_id, message in errors.items():
            if job_id in out and not re.search(r"already complet|Invalid job id", message, re.IGNORECASE):
                out[job_id] = message.strip()  # gone already is what we wanted: no error
        return out

    # ---- crash recovery -----------------------------------------------------------------------------------
    def find_by_name(self, job_names: Sequence[str]) -> dict[str, str]:
        names = list(dict.fromkeys(job_names))
        if not names:
            return {}
        res = self.run_command(
            ["squeue", "-h", "-t", "all", "--name", ",".join(names), "-o", sp.SQUEUE_FORMAT], "squeue --name"
        )
        if not res.ok:
            raise BatchError(
                f"squeue --name for {len(names)} workers failed: {res.stderr.strip() or 'timed out'}", transient=True
            )
        found = sp.squeue_names(res.stdout, set(names))
        left = [n for n in names if n not in found]
        if left:
            stdout = self._sacct(left, ["-S", "now-30days", "--name", ",".join(left)])
            found.update(sp.sacct_names(stdout, set(left)))
        return found
