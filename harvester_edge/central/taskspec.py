"""Task definitions (configs/tasks/*.yaml): validated strictly, errors name the file, the key and the expectation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from harvester_edge.errors import ConfigError


class PayloadSpec(BaseModel, extra="allow"):
    """Opaque for the central service: stored and handed out in the job description (jumbo validates the rest).

    Either {"kind": "python", "callable": "module:function", "args": {...}} or {"kind": "command",
    "template": "..."}; jumbo's own spelling {"callable": ...} / {"command": ...} (no kind) is accepted too.
    """

    kind: Literal["python", "command"] | None = None
    callable: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    template: str | None = Field(None, min_length=1)
    command: str | None = Field(None, min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_entry(self) -> PayloadSpec:
        entries = [k for k in ("callable", "template", "command") if getattr(self, k)]
        if len(entries) != 1:
            raise ValueError(
                "payload needs exactly one of callable: 'module:function' (python) or "
                "template: 'a command line with {first_event} {last_event} {output}' (command)"
            )
        if self.kind == "python" and not self.callable:
            raise ValueError("kind 'python' needs callable: 'module:function'")
        if self.kind == "command" and self.callable:
            raise ValueError("kind 'command' needs template: a command line, not a callable")
        return self


_FILE_NAME = r"^[A-Za-z0-9_.:+-]{1,200}$"
JOB_KINDS = ("jumbo", "ordinary", "eventservice")


class FileSpec(BaseModel, extra="forbid"):
    """An input or output file of an ordinary job (PanDA's FileSpec, the fields a pilot reads)."""

    lfn: str = Field(pattern=_FILE_NAME)
    scope: str = Field("edge", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    guid: str | None = Field(None, max_length=100)
    fsize: int = Field(0, ge=0, le=2**62)
    checksum: str = Field("", max_length=100)


class TaskSpec(BaseModel, extra="forbid"):
    """A task. Its kind (explicit, or implied: a `transformation` makes it ordinary, else it is jumbo):

    - jumbo (eventService 4): `payload` runs on event ranges taken task-wide by jumbo pilots;
    - ordinary: `jobs` PanDA jobs, each runs `transformation` (an http(s) URL the pilot downloads) with
      `job_parameters` (jobPars) once; events / events_per_range / seconds_per_event are not used;
    - eventservice (eventService 1): like ordinary, and each job also takes event ranges of the task
      (getEventRanges) which its pilot reports (updateEventRanges).
    """

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:+-]+$")
    kind: Literal["jumbo", "ordinary", "eventservice"] | None = None
    payload: PayloadSpec | None = None
    transformation: str | None = Field(None, pattern=r"^https?://[^\s]{1,1000}$")
    job_parameters: str = Field("", max_length=100_000)
    cores: int = Field(1, ge=1, le=100_000)
    memory_mb: int | None = Field(None, gt=0, le=10**8)
    walltime: int = Field(0, ge=0, le=10**8)  # seconds; 0: no limit
    prod_source_label: str = Field("managed", pattern=r"^[A-Za-z0-9_-]{1,50}$")
    input_files: list[FileSpec] = Field(default_factory=list, max_length=1000)
    output_files: list[FileSpec] = Field(default_factory=list, max_length=1000)
    events: int | None = Field(None, gt=0, le=100_000_000)
    events_per_range: int | None = Field(None, gt=0, le=1_000_000)
    seconds_per_event: float | None = Field(None, gt=0, le=10**7, allow_inf_nan=False)
    memory_per_rank_mb: int = Field(2000, gt=0, le=10**8)  # SQLite integers: 63 bits; 100 TB per rank is plenty
    max_attempts: int | None = Field(None, ge=1, le=100)
    jobs: int = Field(1, ge=1, le=10_000)
    # dispatch order (higher first) and the fraction of running jobs the task may hold while others wait
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    share: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    scouts: int = Field(10, ge=0, le=1000)  # jumbo: the first ranges measure time and memory (central/scouts.py)
    wait_for_scouts: bool = False  # jumbo: the other ranges wait until no scout is open (PanDA's scouting phase)

    @model_validator(mode="wrap")
    @classmethod
    def _say_what_runs(cls, data: Any, handler: Any) -> TaskSpec:
        """Field errors come with the missing 'what runs' key too, so one pass shows everything to fix."""
        try:
            return handler(data)
        except ValidationError as exc:
            if not isinstance(data, dict) or data.get("payload") is not None or data.get("transformation"):
                raise
            errors = [
                cast(InitErrorDetails, {k: e[k] for k in ("type", "loc", "input", "ctx") if k in e})
                for e in exc.errors()
            ]
            errors.append(
                {
                    "type": PydanticCustomError(
                        "missing", "a task needs payload (jumbo) or transformation (ordinary, eventservice)"
                    ),
                    "loc": ("payload",),
                    "input": None,
                }
            )
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        if self.kind is None:
            self.kind = "ordinary" if self.transformation else "jumbo"
        if self.kind == "jumbo":
            if self.payload is None:
                raise ValueError(
                    "a jumbo task needs payload: {callable: 'module:function'} or {command: ...} "
                    "(or give transformation: 'https://...' for an ordinary task)"
                )
            if self.transformation:
                raise ValueError(
                    "a jumbo task runs its payload: transformation is for ordinary and "
                    "eventservice tasks (kind: ordinary)"
                )
            missing = [k for k in ("events", "events_per_range", "seconds_per_event") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a jumbo task needs {', '.join(missing)}")
        else:
            if not self.transformation:
                raise ValueError(
                    f"a {self.kind} task needs transformation: an http(s) URL of the script the "
                    f"pilot downloads and runs with job_parameters"
                )
            if self.kind == "ordinary":
                if self.events is not None or self.events_per_range is not None:
                    raise ValueError(
                        "an ordinary task has no event ranges: drop events/events_per_range (or use kind: eventservice)"
                    )
                self.events, self.events_per_range = self.jobs, 1  # one unit of work per job
            elif self.events is None or self.events_per_range is None:
                raise ValueError("an eventservice task needs events and events_per_range")
            if self.seconds_per_event is None:
                self.seconds_per_event = float(self.walltime or 60)
        if self.events is None or self.events_per_range is None:  # each branch above set both or raised
            raise ValueError("a task needs events and events_per_range")
        if -(-self.events // self.events_per_range) > 1_000_000:
            raise ValueError("events / events_per_range gives more than 1,000,000 ranges: use larger ranges")
        return self

    def payload_dict(self) -> dict[str, Any] | None:
        return None if self.payload is None else self.payload.model_dump(exclude_none=True)

    def job_dict(self) -> dict[str, Any]:
        """What an ordinary/eventservice job runs (stored with the task; jobs.render_job reads it)."""
        return {
            "transformation": self.transformation,
            "job_parameters": self.job_parameters,
            "cores": self.cores,
            "memory_mb": self.memory_mb or self.memory_per_rank_mb,
            "walltime": self.walltime,
            "prod_source_label": self.prod_source_label,
            "input_files": [f.model_dump() for f in self.input_files],
            "output_files": [f.model_dump() for f in self.output_files],
        }


def format_validation_error(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid task definition"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_task(data: Any, where: str = "task") -> TaskSpec:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping of task keys (name, payload, events, ...), got {type(data).__name__}"
        )
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from exc


def load_task_file(path: Path) -> TaskSpec:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"task file {path}: cannot read it ({exc}); check the path") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"task file {path}: not valid YAML: {exc}") from exc
    return parse_task(data, f"task file {path}")
