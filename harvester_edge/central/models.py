"""Request bodies of the /api/v1 dialect (pydantic): shared by the FastAPI routes and the hot path."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field

from .limits import BIG, MAX_DIAG, MAX_NAME, MAX_STATE

Name = Annotated[str, Field(max_length=MAX_NAME)]
State = Annotated[str, Field(max_length=MAX_STATE)]
Diag = Annotated[str, AfterValidator(lambda text: text[:MAX_DIAG])]  # truncated, as PanDA does
Id = Annotated[int, Field(ge=0, le=BIG)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # PanDA clients send more than we use


def _also(name: str, legacy: str) -> AliasChoices:
    return AliasChoices(name, legacy)  # Harvester's communicator sends pilot/acquire_jobs the legacy getJob names


class AcquireJobs(Body):
    site_name: str = Field(min_length=1, max_length=MAX_NAME, validation_alias=_also("site_name", "siteName"))
    prod_source_label: Name | None = Field(None, validation_alias=_also("prod_source_label", "prodSourceLabel"))
    node: Name | None = None
    computing_element: Name | None = Field(None, validation_alias=_also("computing_element", "computingElement"))
    n_jobs: int = Field(1, ge=1, le=10_000, validation_alias=_also("n_jobs", "nJobs"))
    resource_type: Name | None = None
    harvester_id: Name | None = None
    worker_id: Id | Name | None = None
    scheduler_id: Name | None = None
    job_type: Name | None = None
    remaining_time: float | None = None
    # brokerage (brokerage.py): what one rank of the asking queue offers; PanDA's getJob names `mem`, `coreCount`
    memory: int | None = Field(None, ge=0, le=BIG, validation_alias=_also("memory", "mem"))
    memory_min: int | None = Field(None, ge=0, le=BIG, validation_alias=_also("memory_min", "memMin"))
    core_count: int | None = Field(None, ge=0, le=1_000_000, validation_alias=_also("core_count", "coreCount"))


# snake_case v1 names -> the PanDA camelCase names the service layer stores
_JOB_FIELDS = {
    "job_id": "jobId",
    "job_status": "state",
    "state": "state",
    "trans_exit_code": "transExitCode",
    "pilot_error_code": "pilotErrorCode",
    "pilot_error_diag": "pilotErrorDiag",
    "exe_error_code": "exeErrorCode",
    "exe_error_diag": "exeErrorDiag",
    "node": "node",
    "n_events": "nEvents",
    "core_count": "coreCount",
    "attempt_nr": "attemptNr",
}


def camel_job(update: dict) -> dict:
    return {_JOB_FIELDS.get(k, k): v for k, v in update.items()}


class UpdateJob(Body):
    job_id: Id
    job_status: State
    trans_exit_code: int | None = Field(None, ge=-BIG, le=BIG)
    pilot_error_code: int | None = Field(None, ge=-BIG, le=BIG)
    pilot_error_diag: Diag | None = None
    exe_error_diag: Diag | None = None
    exe_error_code: int | None = Field(None, ge=-BIG, le=BIG)
    node: Name | None = None
    n_events: int | None = Field(None, ge=0, le=BIG)
    core_count: int | None = Field(None, ge=0, le=1_000_000)
    attempt_nr: int | None = Field(None, ge=0, le=BIG)
    start_time: Name | float | None = None
    end_time: Name | float | None = None
    harvester_id: Name | None = None  # optional: who sends it (ownership.py)


class UpdateJobsBulk(Body):
    job_list: list[dict] | str
    harvester_id: Name | None = None


class AcquireRanges(Body):
    job_id: int = Field(ge=0, le=BIG)
    jobset_id: int | None = Field(None, ge=0, le=BIG)
    task_id: int | None = Field(None, ge=0, le=BIG)
    n_ranges: int = Field(10, ge=1, le=100_000)
    scattered: bool = False
    segment_id: int | None = Field(None, ge=0, le=BIG)
    harvester_id: Name | None = None  # optional: who sends it (ownership.py)


class UpdateRanges(Body):
    event_ranges: list | str
    version: int = Field(0, ge=0, le=1)
    harvester_id: Name | None = None  # optional: who sends it (ownership.py)


class Heartbeat(Body):
    harvester_id: str = Field(min_length=1, max_length=MAX_NAME)
    data: dict | None = None


class UpdateWorkers(Body):
    harvester_id: str = Field(min_length=1, max_length=MAX_NAME)
    workers: list[dict] | str  # a list, or its JSON (Harvester's communicator sends json.dumps(list))


class PilotStatus(Body):
    site: Name | None = None
    worker_id: Id | Name
    harvester_id: str = Field(min_length=1, max_length=MAX_NAME)
    status: State
    node_id: Name | None = None


class TaskRef(Body):
    task_id: int = Field(ge=0, le=BIG)


class TaskSet(Body):
    """task/set: a task's dispatch priority and/or share (omitted: unchanged; clear_share: no share limit)."""

    task_id: int = Field(ge=0, le=BIG)
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    share: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    clear_share: bool = False


class ErrorRule(Body):
    """errors/add: a classification rule (source, code, diag regex) -> class."""

    source: str = Field(min_length=1, max_length=64)
    code: int = Field(ge=-BIG, le=BIG)
    diag_pattern: str = Field("", max_length=1000)
    error_class: str = Field(validation_alias=AliasChoices("class", "error_class"), max_length=32)
    status: str = Field("confirmed", max_length=32)


class ErrorEdit(Body):
    """errors/edit: the fields to change of rule `id` (omitted: unchanged)."""

    id: int = Field(ge=0, le=BIG)
    source: str | None = Field(None, min_length=1, max_length=64)
    code: int | None = Field(None, ge=-BIG, le=BIG)
    diag_pattern: str | None = Field(None, max_length=1000)
    error_class: str | None = Field(None, validation_alias=AliasChoices("class", "error_class"), max_length=32)
    status: str | None = Field(None, max_length=32)


class RuleRef(Body):
    id: int = Field(ge=0, le=BIG)


class WorkerNode(Body):
    """pilot/update_worker_node (pilot 3.14+): the node's CPU description, stored per (site, host_name)."""

    model_config = ConfigDict(extra="forbid")  # the real server answers unknown parameters with an argument error
    site: Name
    host_name: Name
    cpu_model: Name
    n_logical_cpus: int | None = Field(None, ge=0, le=10**7)
    n_sockets: int | None = Field(None, ge=0, le=10**4)
    cores_per_socket: int | None = Field(None, ge=0, le=10**6)
    threads_per_core: int | None = Field(None, ge=0, le=10**4)
    cpu_architecture: Name | None = None
    cpu_architecture_level: Name | None = None
    clock_speed: float | None = Field(None, ge=0, le=10**7)
    total_memory: int | None = Field(None, ge=0, le=2**62)
    total_local_disk: int | None = Field(None, ge=0, le=2**62)


class WorkerNodeGpu(Body):
    """pilot/update_worker_node_gpu (pilot 3.14+): one GPU model of a node."""

    model_config = ConfigDict(extra="forbid")
    site: Name
    host_name: Name
    vendor: Name
    model: Name
    count: int = Field(ge=0, le=10**4)
    vram: int | None = Field(None, ge=0, le=2**62)
    architecture: Name | None = None
    framework: Name | None = None
    framework_version: Name | None = None
    driver_version: Name | None = None


class WorkShortage(Body):
    mode: str = Field(pattern="^(on|off|auto)$")  # shortage.py: on, off, or auto (a shortage when no work waits)


class LogRecord(Body):
    """One payload output line as the pilot wrote it (jumbo.paylog) and the harvester read it (offset in its file)."""

    offset: int = Field(ge=0, le=BIG)
    job: int = Field(ge=0, le=BIG)
    task: int | None = Field(None, ge=0, le=BIG)  # informational: the job's own task is stored
    worker: int | None = Field(None, ge=0, le=BIG)
    rank: int = Field(ge=0, le=2**31 - 1)
    range: str | None = Field(None, max_length=MAX_NAME)
    stream: str = Field(pattern="^(stdout|stderr|meta)$")
    time: float = Field(ge=0, le=1e11)
    msg: str = Field(max_length=16 * 1024)
    truncated: bool = False


class LogUpload(Body):
    """logs/upload: lines of one pilot file (source: the harvester's name for it), each with its byte offset."""

    harvester_id: Name | None = None
    source: str = Field(min_length=1, max_length=MAX_NAME)
    records: list[LogRecord] = Field(max_length=20_000)
