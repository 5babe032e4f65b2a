"""Pure helpers shared by the script templates of the Slurm, LSF and local plugins."""

from __future__ import annotations

import functools
import shlex
import string
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from harvester_edge.batch import WorkerSpec
from harvester_edge.errors import ConfigError

if TYPE_CHECKING:
    from harvester_edge.config import QueueConfig

ROOT_MPI_ENV = ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")


def load_template(queue: QueueConfig, default_name: str) -> string.Template:
    """The site's override (queue.template) or the shipped template."""
    override = queue.template
    if override is not None:
        try:
            return string.Template(Path(override).read_text())
        except OSError as exc:
            raise ConfigError(
                f"queue {queue.name}: cannot read template {override}: {exc}; fix 'template:' in the queue config"
            ) from exc
    return _shipped(default_name)


@functools.lru_cache(maxsize=8)
def _shipped(name: str) -> string.Template:
    """A template shipped with the plugins, read once per process (it is read for every submission otherwise)."""
    return string.Template(resources.files("harvester_edge.plugins").joinpath("templates", name).read_text())


def env_exports(spec: WorkerSpec) -> str:
    lines = [
        f"export HE_WORKER_ID={spec.worker_id}",
        f"export HE_ACCESS_POINT={shlex.quote(str(spec.access_point))}",
        f"export HE_WALLTIME={int(spec.walltime)}",
    ]
    lines += [f"export {key}={shlex.quote(str(value))}" for key, value in sorted(spec.env.items())]
    return "\n".join(lines)


def root_mpi_env() -> str:
    """Open MPI refuses to run as root unless told twice; only set when the script really runs as root."""
    return 'if [ "$(id -u)" = 0 ]; then export ' + " ".join(f"{v}=1" for v in ROOT_MPI_ENV) + "; fi"


def launch_line(queue: QueueConfig, spec: WorkerSpec, launcher: str | None = None) -> str:
    """The command that starts the pilot on every rank: srun, mpirun or the pilot alone."""
    launcher = launcher or queue.launcher
    pilot = " ".join(shlex.quote(a) for a in spec.pilot_argv) or "true"
    ranks = spec.nodes * spec.ranks_per_node
    if launcher == "srun":
        mpi = queue.mpi_type
        return (
            f"srun --mpi={shlex.quote(mpi)} --export=ALL --nodes={spec.nodes} --ntasks={ranks} "
            f"--ntasks-per-node={spec.ranks_per_node} --cpus-per-task={spec.cores_per_rank} {pilot}"
        )
    if launcher == "mpirun":
        return f"{root_mpi_env()}\nmpirun -np {ranks} --map-by ppr:{spec.ranks_per_node}:node {pilot}"
    if launcher == "none":
        return pilot
    raise ConfigError(f"queue {queue.name}: unknown launcher {launcher!r}; use srun, mpirun or none")


def render(
    template: string.Template,
    spec: WorkerSpec,
    directives: list[str],
    env_setup: list[str],
    launch: str,
    drain_warning: int,
) -> str:
    return template.substitute(
        worker_id=spec.worker_id,
        job_name=spec.job_name,
        access_point=str(spec.access_point),
        access_point_q=shlex.quote(str(spec.access_point)),
        directives="\n".join(directives),
        env_setup="\n".join(env_setup),
        env_exports=env_exports(spec),
        launch=launch,
        nodes=spec.nodes,
        ranks_per_node=spec.ranks_per_node,
        cores_per_rank=spec.cores_per_rank,
        walltime=spec.walltime,
        drain_warning=drain_warning,
    )
