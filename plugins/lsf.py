"""IBM Spectrum LSF: bsub / bjobs / bkill through the CommandRunner seam (tested from recorded outputs).

Submission pipes the rendered script into `bsub` on stdin, so LSF reads its #BSUB directives. Status is ONE
`bjobs -a -o "<fields>" -json <ids>`: LSF keeps finished jobs in bjobs for CLEAN_PERIOD (default 3600 s), far longer
than a monitor cycle, so ids it no longer knows are MISSING without a second (bhist/bacct) call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

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
from harvester_edge.plugins import lsf_parse as lp
from harvester_edge.seams.commands import CommandResult

log = logging.getLogger(__name__)

SCRIPT_NAME = "worker.bsub"


class LSFPlugin(ScriptBatchPlugin):
    name = "lsf"
    script_name = SCRIPT_NAME

    # ---- render -------------------------------------------------------------------------------------------
    def directives(self, spec: WorkerSpec) -> list[str]:
        q = self.queue
        ap = spec.access_point
        ranks = spec.nodes * spec.ranks_per_node
        lines = [
            f"-J {spec.job_name}",
            f"-n {ranks}",
            f'-R "span[ptile={spec.ranks_per_node}]"',
            f'-R "affinity[core({spec.cores_per_rank})]"',
            f"-W {lp.format_walltime(spec.walltime)}",
            f"-o {ap}/lsf-%J.out",
            f"-e {ap}/lsf-%J.err",
            f"-cwd {ap}",
        ]
        drain = q.drain_warning
        if drain > 0:
            # -wt is in minutes; the batch shell forwards USR1 to the launcher (see the template)
            lines += ["-wa USR1", f"-wt {max(1, drain // 60)}"]
        memory = spec.memory_mb or q.memory_mb
        if memory:  # LSF's rusage[mem] is per task (slot): split the per-node figure
            lines.append(f'-R "rusage[mem={max(1, int(memory) // max(1, spec.ranks_per_node))}]"')
        for value, flag in ((q.partition, "-q"), (q.account, "-P"), (q.qos, "-sla"), (q.reservation, "-U")):
            if value:
                lines.append(f"{flag} {value}")
        if q.constraint:
            lines.append(f'-R "select[{q.constraint}]"')
        out = [f"#BSUB {line}" for line in lines]
        for extra in q.extra_directives:
            out.append(extra if extra.lstrip().startswith("#") else f"#BSUB {extra}")
        return out

    def render_script(self, spec: WorkerSpec) -> str:
        launcher = self.queue.launcher
        if launcher == "srun":  # no srun under LSF: Open MPI's mpirun reads the LSF allocation
            launcher = "mpirun"
        template = _render.load_template(self.queue, "lsf.bsub")
        return _render.render(
            template,
            spec,
            self.directives(spec),
            list(self.queue.env_setup),
            _render.launch_line(self.queue, spec, launcher),
            self.queue.drain_warning,
        )

    # ---- submit -------------------------------------------------------------------------------------------
    def submit_args(self, path: Path, text: str) -> tuple[list[str], str | None]:
        # bsub reads the script on stdin (its #BSUB lines are only honoured that way)
        return ["bsub"], text

    def parse_submit(self, spec: WorkerSpec, res: CommandResult) -> SubmitResult:
        if res.timed_out:
            return SubmitResult(
                spec.worker_id,
                None,
                f"bsub timed out after {res.duration:.0f} s; the job may "
                f"exist: check find_by_name({spec.job_name!r}) before resubmitting",
                True,
            )
        batch_id = lp.parse_bsub(res.stdout) if res.returncode == 0 else None
        if batch_id is not None:
            log.info("worker %d: submitted as LSF job %s (%s)", spec.worker_id, batch_id, spec.job_name)
            return SubmitResult(spec.worker_id, batch_id, None)
        message = (
            " ".join((res.stderr.strip() + " " + res.stdout.strip()).split())
            or f"bsub exited {res.returncode} with no output"
        )
        transient = classify_error(message, lp.BSUB_TRANSIENT, lp.BSUB_PERMANENT)
        log.error("worker %d: bsub failed (%s): %s", spec.worker_id, "transient" if transient else "permanent", message)
        return SubmitResult(spec.worker_id, None, f"bsub failed for {spec.job_name}: {message}", transient)

    # ---- status -------------------------------------------------------------------------------------------
    def _bjobs(self, extra: list[str], what: str) -> tuple[dict[str, dict], dict[str, str]]:
        argv = ["bjobs", "-a", "-o", lp.BJOBS_FIELDS, "-json", *extra]
        res = self.run_command(argv, what)
        try:
            # bjobs exits non-zero when some ids are unknown, but still prints the JSON with ERROR records
            return lp.parse_bjobs_json(res.stdout)
        except ValueError:
            pass
        text = (res.stderr + res.stdout).strip()
        if re.search(r"No (?:unfinished )?job found|is not found", text):
            return {}, {}
        raise BatchError(
            f"{what} failed (exit {res.returncode}): {text or 'timed out'}; is mbatchd reachable? retrying next cycle",
            transient=True,
        )

    def status(self, batch_ids: Sequence[str]) -> dict[str, WorkerStatus]:
        ids = list(dict.fromkeys(str(b) for b in batch_ids))
        if not ids:
            return {}
        records, errors = self._bjobs(ids, f"bjobs for {len(ids)} jobs")
        found = lp.bjobs_statuses(records, set(ids))
        for batch_id in ids:
            if batch_id not in found:
                reason = errors.get(batch_id, "unknown to bjobs")
                log.info("job %s: %s, reported MISSING", batch_id, reason)
                found[batch_id] = WorkerStatus(batch_id, BatchState.MISSING, "", reason)
        return found

    # ---- cancel -------------------------------------------------------------------------------------------
    def cancel(self, batch_ids: Sequence[str]) -> dict[str, str | None]:
        ids = list(dict.fromkeys(str(b) for b in batch_ids))
        if not ids:
            return {}
        res = self.run_command(["bkill", *ids], "bkill")
        text = res.stdout + "\n" + res.stderr
        if res.timed_out or not re.search(r"Job <", text):
            raise BatchError(
                f"bkill of {len(ids)} jobs failed: {res.stderr.strip() or 'timed out'}; retrying next cycle",
                transient=True,
            )
        return lp.parse_bkill(text, ids)

    # ---- crash recovery -----------------------------------------------------------------------------------
    def find_by_name(self, job_names: Sequence[str]) -> dict[str, str]:
        """ONE `bjobs -a` over the user's recent jobs, filtered by name here (-J takes a single name)."""
        wanted = set(job_names)
        if not wanted:
            return {}
        records, _ = self._bjobs([], f"bjobs -a for {len(wanted)} names")
        found: dict[str, str] = {}
        for job_id, rec in sorted(records.items(), key=lambda kv: int(re.sub(r"\D", "", kv[0]) or 0)):
            name = str(rec.get("JOB_NAME", ""))
            if name in wanted:
                found[name] = job_id  # the newest id wins
        return found
