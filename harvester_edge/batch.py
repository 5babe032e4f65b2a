"""The batch-system plugin interface: submit, status, cancel and find_by_name over many workers per call.

One contract for every plugin (slurm, lsf, local):
- `submit` reports per worker and never raises for one worker's failure; each failure is classified transient
  (retry later with backoff) or permanent (fail the worker, the error says why).
- `status`, `cancel` and `find_by_name` raise `BatchError(transient=...)` when the batch command as a whole fails.
- `status` makes ONE queue call for all ids; ids the queue no longer lists are looked up in the accounting
  (one more call); ids unknown everywhere are MISSING.
- No I/O in constructors; all commands go through the `CommandRunner` seam, all writes into access points through
  the pilot-file seam (`PilotFiles`, so traces show them).
Script-based systems subclass `ScriptBatchPlugin` and override its steps: render the script, the submit
command's arguments, its run, and the parsing of its answer (as Balsam's subprocess scheduler interface).
Plugins are found by name through the entry-point group "harvester_edge.batch".
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.seams.commands import CommandNotFound, CommandResult, CommandRunner
from harvester_edge.seams.files import PilotFiles

if TYPE_CHECKING:  # the pydantic model; plugins only read its attributes
    from harvester_edge.config import QueueConfig

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "harvester_edge.batch"


class BatchState(str, Enum):
    """Batch-neutral worker states, what the harvester acts on."""

    QUEUED = "queued"  # accepted, waiting for resources (or held)
    RUNNING = "running"  # started (includes Slurm CONFIGURING/COMPLETING)
    SUSPENDED = "suspended"  # stopped by the scheduler or an admin, may resume
    FINISHED = "finished"  # ended with exit code 0
    FAILED = "failed"  # ended with a non-zero exit, node failure, out of memory, boot failure
    CANCELLED = "cancelled"  # cancelled by us, a user or an admin, or preempted for good
    TIMEOUT = "timeout"  # walltime reached: usually expected for pilots that drain, not a failure
    UNKNOWN = "unknown"  # the batch system printed a state we do not know (logged with a warning)
    MISSING = "missing"  # neither the queue nor the accounting knows the id (any more)


TERMINAL = frozenset(
    {BatchState.FINISHED, BatchState.FAILED, BatchState.CANCELLED, BatchState.TIMEOUT, BatchState.MISSING}
)


@dataclass(frozen=True)
class WorkerSpec:
    """What to run for one worker; the plugin renders it into a batch script."""

    worker_id: int
    job_name: str  # unique, carries the worker id ("he-<site>-w000042"): find_by_name uses it
    access_point: Path  # the worker's directory: script, stdout/stderr, state files go here
    nodes: int
    ranks_per_node: int
    cores_per_rank: int
    walltime: int  # seconds
    memory_mb: int | None = None  # per node
    pilot_argv: list[str] = field(default_factory=list)  # the command each MPI rank runs
    env: dict[str, str] = field(default_factory=dict)  # exported in the script


@dataclass(frozen=True)
class SubmitResult:
    worker_id: int
    batch_id: str | None
    error: str | None
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.batch_id is not None and self.error is None


@dataclass(frozen=True)
class WorkerStatus:
    batch_id: str
    state: BatchState
    raw_state: str
    reason: str = ""
    exit_code: int | None = None
    start_time: float | None = None  # epoch seconds
    end_time: float | None = None


class BatchError(HarvesterEdgeError):
    """A batch command failed as a whole (e.g. squeue could not reach the controller)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class UnknownPlugin(HarvesterEdgeError):
    """The site config names a batch plugin that no installed package provides."""


class BatchPlugin(ABC):
    """One batch system over its command-line tools. Subclasses set `name` and implement the five verbs."""

    name: ClassVar[str]

    def __init__(self, queue: QueueConfig, runner: CommandRunner, files: PilotFiles | None = None) -> None:
        self.queue = queue
        self.runner = runner
        self.files = files if files is not None else PilotFiles()  # the site's pilot-file seam (harvester_edge.site)

    @property
    def timeout(self) -> float:
        return float(self.queue.command_timeout)

    @abstractmethod
    def render_script(self, spec: WorkerSpec) -> str:
        """The batch script for one worker (pure)."""

    @abstractmethod
    def submit(self, specs: Sequence[WorkerSpec]) -> list[SubmitResult]:
        """Write each script into its access point, submit, one result per spec in order."""

    @abstractmethod
    def status(self, batch_ids: Sequence[str]) -> dict[str, WorkerStatus]:
        """State of every id; ONE queue call, one accounting call for the ids the queue dropped."""

    @abstractmethod
    def cancel(self, batch_ids: Sequence[str]) -> dict[str, str | None]:
        """Cancel every id: id -> error message, or None when the cancel was accepted (or it had already ended)."""

    @abstractmethod
    def find_by_name(self, job_names: Sequence[str]) -> dict[str, str]:
        """job_name -> batch_id for the names the batch system knows (crash recovery: never lose nor double)."""

    def idle_nodes(self) -> int | None:
        """Nodes of the queue idle right now (for `backfill: true` shaping), or None when the batch system does not
        say. Never raises: backfill is an optimisation, and without an answer workers are shaped as usual."""
        return None


class ScriptBatchPlugin(BatchPlugin):
    """A batch system driven by a submit command over a rendered script (Slurm's sbatch, LSF's bsub).

    `submit` is written once here: render the script, write it into the access point, then per worker
    `submit_args` (the argv and stdin) -> `run_submit` (the command, in the access point) -> `parse_submit`
    (the answer into a SubmitResult). Subclasses override those three and `render_script`; a bad template, an
    unwritable access point or a missing command fails that one worker, permanently, with the reason.
    `run_command` is the run of every other verb: a missing command is a permanent `BatchError`.
    """

    script_name: ClassVar[str]  # the script's file name in the access point ("worker.sbatch")

    @abstractmethod
    def submit_args(self, path: Path, text: str) -> tuple[list[str], str | None]:
        """The submit command for the script written at `path` (its text is `text`): (argv, stdin or None)."""

    def run_submit(self, spec: WorkerSpec, argv: list[str], stdin: str | None) -> CommandResult:
        """Run the submit command in the worker's access point (raises CommandNotFound)."""
        return self.runner.run(argv, stdin=stdin, timeout=self.timeout, cwd=str(spec.access_point))

    @abstractmethod
    def parse_submit(self, spec: WorkerSpec, res: CommandResult) -> SubmitResult:
        """The submit command's answer for one worker: its batch id, or the error classified transient/permanent."""

    def submit(self, specs: Sequence[WorkerSpec]) -> list[SubmitResult]:
        results = []
        for spec in specs:
            try:
                text = self.render_script(spec)
                path = self.files.write_script(spec.access_point, self.script_name, text)
            except Exception as exc:
                log.error("worker %d: cannot write its batch script in %s: %s", spec.worker_id, spec.access_point, exc)
                results.append(SubmitResult(spec.worker_id, None, f"cannot write batch script: {exc}", False))
                continue
            argv, stdin = self.submit_args(path, text)
            try:
                res = self.run_submit(spec, argv, stdin)
            except CommandNotFound as exc:
                results.append(SubmitResult(spec.worker_id, None, str(exc), False))
                continue
            results.append(self.parse_submit(spec, res))
        return results

    def run_command(self, argv: list[str], what: str, failure_expected: bool = False) -> CommandResult:
        """One status/cancel/lookup command; a command that is not installed raises BatchError(transient=False)."""
        try:
            return self.runner.run(argv, timeout=self.timeout, failure_expected=failure_expected)
        except CommandNotFound as exc:
            raise BatchError(f"{what}: {exc}", transient=False) from exc


def classify_error(
    message: str,
    transient_patterns: Sequence[tuple[str, str]],
    permanent_patterns: Sequence[tuple[str, str]] = (),
    default_transient: bool = False,
) -> bool:
    """True when `message` matches a transient pattern; permanent patterns win over transient ones.

    Patterns are (regex, source) pairs; the source documents where the message comes from.
    """
    for pattern, _source in permanent_patterns:
        if re.search(pattern, message, re.IGNORECASE):
            return False
    for pattern, _source in transient_patterns:
        if re.search(pattern, message, re.IGNORECASE):
            return True
    return default_transient


def known_plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(name: str) -> type[BatchPlugin]:
    """The plugin class registered under `name` in the "harvester_edge.batch" entry-point group."""
    plugins = known_plugins()
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none (is harvester-edge installed? run pip install -e .)"
        raise UnknownPlugin(
            f"batch plugin {name!r} is not installed; known plugins: {known}; "
            f"fix 'batch:' in the queue config or install the package that provides it"
        )
    try:
        cls = plugins[name].load()
    except Exception as exc:  # an import error inside the plugin: say which one
        raise UnknownPlugin(f"batch plugin {name!r} ({plugins[name].value}) failed to import: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BatchPlugin)):
        raise UnknownPlugin(f"entry point {name!r} ({plugins[name].value}) is not a BatchPlugin subclass")
    return cls
