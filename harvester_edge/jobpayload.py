"""The one mapping "PanDA job dict -> jumbo payload spec", used where a job is handed to a jumbo pilot.

- A job of the embedded service's jumbo tasks carries the `payload` extension (the task's payload spec): jumbo
  runs it as is, without the service's `kind` tag.
- Any other job (an ordinary task of the embedded service, or a real PanDA server's job, which has no `payload`)
  runs its `transformation` (an http(s) URL, downloaded) with its `jobPars` through the callable
  jumbo.transform:run, once per event range the job holds (an ordinary job holds one).
"""
from __future__ import annotations

from typing import Any

TRANSFORM_CALLABLE = "jumbo.transform:run"


def jumbo_payload(job: dict[str, Any]) -> dict[str, Any]:
    """The payload spec jumbo runs for this job; ValueError naming the PandaID when the job has neither."""
    if job.get("payload"):
        payload = dict(job["payload"])
        payload.pop("kind", None)
        return payload
    trf = job.get("transformation")
    if not isinstance(trf, str) or not trf.startswith(("http://", "https://")):
        raise ValueError(f"job {job.get('PandaID')}: no payload and no http(s) transformation ({trf!r:.100}): "
                         f"jumbo cannot run it")
    return {"callable": TRANSFORM_CALLABLE, "isolation": "process", "output": False,
            "args": {"transformation": trf, "job_parameters": str(job.get("jobPars") or ""),
                     "cores": int(job.get("coreCount") or 1)}}
