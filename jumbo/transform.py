"""Run a PanDA transformation as a jumbo payload: download it (http/https), then run `./trf <jobPars>`.

The way the PanDA pilot's generic user runs an ordinary job: the script is fetched into the range's working
directory, made executable and run with the job parameters split like a shell would (no shell is involved).
A non-zero exit fails the range with that exit code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from jumbo.payloads import PayloadError

DOWNLOAD_FAILED = 1149  # PanDA pilot TRFDOWNLOADFAILURE; = harvester_edge.codes.PilotError (jumbo imports none)
DOWNLOAD_TIMEOUT = 60


def fetch(url: str, workdir: Path) -> Path:
    name = os.path.basename(urlparse(url).path) or "transformation"
    target = workdir / name
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as answer, open(target, "wb") as fh:
            fh.write(answer.read())
    except OSError as exc:
        raise PayloadError(DOWNLOAD_FAILED, f"transformation {url} could not be downloaded: {exc}") from exc
    target.chmod(0o755)
    return target


def run(first_event: int, last_event: int, output_path: str, context: dict) -> dict:
    args = context.get("args") or {}
    workdir = Path(output_path).parent / f"trf-{context.get('panda_id')}-{first_event}"
    workdir.mkdir(parents=True, exist_ok=True)
    script = fetch(str(args["transformation"]), workdir)
    env = {
        **os.environ,
        "FIRST_EVENT": str(first_event),
        "LAST_EVENT": str(last_event),
        "PANDA_ID": str(context.get("panda_id")),
        "ATHENA_PROC_NUMBER": str(args.get("cores", 1)),
    }
    proc = subprocess.run(
        [str(script), *shlex.split(str(args.get("job_parameters") or ""))],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise PayloadError(proc.returncode, f"transformation {script.name} exited with {proc.returncode}")
    return {"nEvents": last_event - first_event + 1}
