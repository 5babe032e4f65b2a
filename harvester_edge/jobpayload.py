"""The one mapping "PanDA job dict -> what the jumbo pilot runs", and the worker shape a real job's fields ask for.

The embedded service adds four extensions to its job descriptions: `payload` (what jumbo runs), `eventsPerRange`,
`secondsPerEvent` and `nEventsRemaining`. Three kinds of job reach a jumbo pilot:
- a jumbo task's job (the embedded service): it carries `payload`, run as is (without the service's `kind` tag);
- an ordinary task's job (the embedded service: sizing extensions, no `payload`): its `transformation` (an http(s)
  URL the operator points at a server the compute nodes reach) is downloaded and run with its `jobPars` through
  the callable jumbo.transform:run, once per event range, as the PanDA pilot's generic user runs it;
- a real PanDA server's job (pandaserver/taskbuffer/JobSpec.py fields, none of the extensions): the transformation and
  jobPars become a command, run once per event range in a fresh process:
  ``[<transformation>, *shlex.split(jobPars)]``, and when jobPars does not place the range itself (no
  ``{first_event}``/``{last_event}``/``{output}`` in it), ``--firstEvent={first_event} --lastEvent={last_event}
  --outputFile={output}`` appended. Literal braces in jobPars are kept (escaped for the pilot's template). A
  transformation given as an http(s) URL (a grid pilot downloads it) is run by its file name: an HPC site
  installs the transformations of the server it serves (compute nodes rarely reach a grid server).
  Event ranges come from the server's own calls (event/acquire_event_ranges with the job's real jobsetID); the
  job's size in events is not known in advance (None), so the harvester runs one worker at a time for it until
  the server has no more ranges. The worker: `coreCount` cores per rank (one range at a time per rank), as many
  ranks per node as the node's cores and memory (`minRamCount` MB per rank) allow, and a walltime of
  `maxWalltime` seconds within the queue's limits.
Self-contained on purpose (no import of the rest of harvester-edge).
"""

from __future__ import annotations

import math
import posixpath
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

EXTENSIONS = ("payload", "eventsPerRange", "secondsPerEvent", "nEventsRemaining")
TRANSFORM_CALLABLE = "jumbo.transform:run"
PLACEHOLDERS = ("{first_event}", "{last_event}", "{output}")
RANGE_ARGS = ["--firstEvent={first_event}", "--lastEvent={last_event}", "--outputFile={output}"]


class JobPayloadError(ValueError):
    """A real job this harvester cannot run (no transformation, unreadable jobPars): the message names the field."""


def is_real(job: dict[str, Any]) -> bool:
    """True for a job without the embedded service's `payload` extension (a real PanDA server's job)."""
    return not isinstance(job.get("payload"), dict)


def from_real_server(job: dict[str, Any]) -> bool:
    """True for a job as a real server sends it, also after pilot_job added its payload: none of the sizing
    extensions (the embedded service always sends eventsPerRange)."""
    return not any(key in job for key in EXTENSIONS[1:])


def transformation_command(transformation: str) -> str:
    """The program to run: the transformation itself, or the file name of a transformation URL."""
    if urlparse(transformation).scheme in ("http", "https"):
        name = posixpath.basename(urlparse(transformation).path)
        if not name:
            raise JobPayloadError(f"transformation URL {transformation!r} names no file")
        return name
    return transformation


def command_payload(job: dict[str, Any]) -> dict[str, Any]:
    """The jumbo command payload of a real job (module doc); JobPayloadError names what is missing."""
    trf = job.get("transformation")
    if not isinstance(trf, str) or not trf.strip() or trf == "NULL":
        raise JobPayloadError(f"job {job.get('PandaID')}: 'transformation' is missing, got {trf!r:.80}")
    pars = job.get("jobPars") or ""
    if not isinstance(pars, str):
        raise JobPayloadError(f"job {job.get('PandaID')}: 'jobPars' must be text, got {type(pars).__name__}")
    try:
        args = shlex.split(pars)
    except ValueError as exc:
        raise JobPayloadError(f"job {job.get('PandaID')}: 'jobPars' is not a shell word list: {exc}") from exc
    if any(p in pars for p in PLACEHOLDERS):
        return {"command": [transformation_command(trf), *args], "isolation": "process"}
    escaped = [a.replace("{", "{{").replace("}", "}}") for a in args]
    return {
        "command": [transformation_command(trf).replace("{", "{{").replace("}", "}}"), *escaped, *RANGE_ARGS],
        "isolation": "process",
    }


def pilot_job(job: dict[str, Any]) -> dict[str, Any]:
    """The job as the harvester keeps it: a real server's job gets its command `payload`; the embedded service's
    jobs pass unchanged (jumbo_payload maps them when their job spec is written)."""
    if not is_real(job) or not from_real_server(job):
        return job
    return {**job, "payload": command_payload(job)}


def jumbo_payload(job: dict[str, Any]) -> dict[str, Any]:
    """The payload spec jumbo runs for this job (module doc); JobPayloadError naming the PandaID when it has none."""
    if isinstance(job.get("payload"), dict):
        payload = dict(job["payload"])
        payload.pop("kind", None)
        return payload
    trf = job.get("transformation")
    if not isinstance(trf, str) or not trf.startswith(("http://", "https://")):
        raise JobPayloadError(
            f"job {job.get('PandaID')}: no payload and no http(s) transformation ({trf!r:.100}): jumbo cannot run it"
        )
    return {
        "callable": TRANSFORM_CALLABLE,
        "isolation": "process",
        "output": False,
        "args": {
            "transformation": trf,
            "job_parameters": str(job.get("jobPars") or ""),
            "cores": int(job.get("coreCount") or 1),
        },
    }


def events_total(job: dict[str, Any]) -> int | None:
    """Events still to process, when the job says (nEventsRemaining, else nEvents); None for a real job."""
    for key in ("nEventsRemaining", "nEvents"):
        value = job.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _positive(job: dict[str, Any], key: str) -> int | None:
    value = job.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


@dataclass(frozen=True)
class WorkerShape:
    ranks_per_node: int
    walltime: int


def worker_shape(
    job: dict[str, Any],
    cores_per_node: int,
    ranks_per_node: int,
    memory_mb: int | None,
    walltime_min: int,
    walltime_max: int,
) -> WorkerShape:
    """Ranks per node and walltime from the job's coreCount, minRamCount (MB per rank) and maxWalltime (s), within
    the queue's node (cores, memory) and walltime limits; a field the job lacks leaves the queue's value."""
    ranks = ranks_per_node
    cores = _positive(job, "coreCount")
    if cores is not None:
        ranks = max(1, cores_per_node // cores)
    ram = _positive(job, "minRamCount")
    if ram is not None and memory_mb:
        ranks = max(1, min(ranks, memory_mb // ram))
    wall = _positive(job, "maxWalltime")
    walltime = walltime_max if wall is None else min(walltime_max, max(walltime_min, math.ceil(wall)))
    return WorkerShape(ranks_per_node=ranks, walltime=walltime)
