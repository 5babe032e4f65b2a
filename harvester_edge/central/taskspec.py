"""Task definitions (configs/tasks/*.yaml): validated strictly, errors name the file, the key and the expectation."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

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
    def _one_entry(self) -> "PayloadSpec":
        entries = [k for k in ("callable", "template", "command") if getattr(self, k)]
        if len(entries) != 1:
            raise ValueError("payload needs exactly one of callable: 'module:function' (python) or "
                             "template: 'a command line with {first_event} {last_event} {output}' (command)")
        if self.kind == "python" and not self.callable:
            raise ValueError("kind 'python' needs callable: 'module:function'")
        if self.kind == "command" and self.callable:
            raise ValueError("kind 'command' needs template: a command line, not a callable")
        return self


class TaskSpec(BaseModel, extra="forbid"):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:+-]+$")
    payload: PayloadSpec
    events: int = Field(gt=0, le=100_000_000)
    events_per_range: int = Field(gt=0, le=1_000_000)
    seconds_per_event: float = Field(gt=0, le=10**7, allow_inf_nan=False)
    memory_per_rank_mb: int = Field(2000, gt=0, le=10**8)  # SQLite integers: 63 bits; 100 TB per rank is plenty
    max_attempts: int | None = Field(None, ge=1, le=100)
    jobs: int = Field(1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _bounded_split(self) -> "TaskSpec":
        if -(-self.events // self.events_per_range) > 1_000_000:
            raise ValueError("events / events_per_range gives more than 1,000,000 ranges: use larger ranges")
        return self

    def payload_dict(self) -> dict[str, Any]:
        return self.payload.model_dump(exclude_none=True)


def format_validation_error(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid task definition"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_task(data: Any, where: str = "task") -> TaskSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of task keys (name, payload, events, ...), "
                          f"got {type(data).__name__}")
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
