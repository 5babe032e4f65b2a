"""Errors of the central service; each maps to a PanDA StatusCode for the legacy dialect."""

from __future__ import annotations

from harvester_edge.codes import StatusCode
from harvester_edge.errors import HarvesterEdgeError


class CentralError(HarvesterEdgeError):
    """A request the central service refuses; nothing was written."""

    status_code = StatusCode.FAILED


class InvalidInput(CentralError):
    """A malformed or out-of-range parameter (wrong type, bad id format, unknown status)."""

    status_code = StatusCode.INVALID


class NotFound(CentralError):
    """An unknown task, job or event range id."""

    status_code = StatusCode.INVALID


class IllegalStateChange(CentralError):
    """A state change the state machine does not allow (e.g. a finished job back to running)."""

    status_code = StatusCode.FAILED


class AuthError(CentralError):
    """A missing, forged, expired, wrong-audience or revoked credential (HTTP 403)."""

    status_code = StatusCode.PERMISSION


class NoJobs(CentralError):
    """acquire_jobs found nothing to hand out: the real server answers success=false "No jobs in PanDA" (HTTP 200)."""

    status_code = StatusCode.NO_JOBS
    http_status = 200
