"""Request bodies of the /api/v1 dialect (pydantic): shared by the FastAPI routes and the hot path."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

BIG = 2**62


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # PanDA clients send more than we use


class AcquireJobs(Body):
    site_name: str = Field(min_length=1, max_length=200)
    prod_source_label: str | None = None
    node: str | None = Field(None, max_length=500)
    computing_element: str | None = None
    n_jobs: int = Field(1, ge=1, le=10_000)
    resource_type: str | None = None
    harvester_id: str | None = Field(None, max_length=200)
    worker_id: int | str | None = None
    scheduler_id: str | None = None
    job_type: str | None = None
    remaining_time: float | None = None


# snake_case v1 names -> the PanDA camelCase names the service layer stores
_JOB_FIELDS = {"job_id": "jobId", "job_status": "state", "state": "state", "trans_exit_code": "transExitCode",
               "pilot_error_code": "pilotErrorCode", "pilot_error_diag": "pilotErrorDiag",
               "exe_error_code": "exeErrorCode", "exe_error_diag": "exeErrorDiag", "node": "node",
               "n_events": "nEvents", "core_count": "coreCount", "attempt_nr": "attemptNr"}


def camel_job(update: dict) -> dict:
    return {_JOB_FIELDS.get(k, k): v for k, v in update.items()}


class UpdateJob(Body):
    job_id: int = Field(ge=0, le=BIG)
    job_status: str = Field(max_length=32)
    trans_exit_code: int | None = Field(None, ge=-BIG, le=BIG)
    pilot_error_code: int | None = Field(None, ge=-BIG, le=BIG)
    pilot_error_diag: str | None = None
    exe_error_code: int | None = Field(None, ge=-BIG, le=BIG)
    exe_error_diag: str | None = None
    node: str | None = None
    n_events: int | None = Field(None, ge=0, le=BIG)
    core_count: int | None = Field(None, ge=0, le=1_000_000)
    attempt_nr: int | None = None
    start_time: str | float | None = None
    end_time: str | float | None = None
    harvester_id: str | None = Field(None, max_length=200)  # optional: who sends it (ownership.py)


class UpdateJobsBulk(Body):
    job_list: list[dict] | str
    harvester_id: str | None = Field(None, max_length=200)


class AcquireRanges(Body):
    job_id: int = Field(ge=0, le=BIG)
    jobset_id: int | None = Field(None, ge=0, le=BIG)
    task_id: int | None = Field(None, ge=0, le=BIG)
    n_ranges: int = Field(10, ge=1, le=100_000)
    scattered: bool = False
    segment_id: int | None = None
    harvester_id: str | None = Field(None, max_length=200)  # optional: who sends it (ownership.py)


class UpdateRanges(Body):
    event_ranges: list | str
    version: int = Field(0, ge=0, le=1)
    harvester_id: str | None = Field(None, max_length=200)  # optional: who sends it (ownership.py)


class Heartbeat(Body):
    harvester_id: str = Field(min_length=1, max_length=200)
    data: dict | None = None


class UpdateWorkers(Body):
    harvester_id: str = Field(min_length=1, max_length=200)
    workers: list[dict]


class PilotStatus(Body):
    site: str | None = None
    worker_id: int | str
    harvester_id: str = Field(min_length=1, max_length=200)
    status: str
    node_id: str | None = None


class TaskRef(Body):
    task_id: int = Field(ge=0, le=BIG)
