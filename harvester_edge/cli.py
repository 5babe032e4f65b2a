"""The `harvester-edge` command: the daemon (run, cron), operations (status, drain, kill-workers, worker), the central
service's groups (central, task, errors), the demo, and offline replay (replay, simulate)."""

from __future__ import annotations

import logging
import os
import sys
from functools import cached_property
from pathlib import Path

import click

from harvester_edge.alerts.cli import alerts_group
from harvester_edge.central.cli import _settings as central_settings
from harvester_edge.central.cli import central_group, errors_group, task_group
from harvester_edge.central.logs_cli import logs_command
from harvester_edge.cli_views import errors_summary, status_cmd, worker_group
from harvester_edge.config import SiteConfig, load_config
from harvester_edge.demo import demo
from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.operations import request_kill, set_draining
from harvester_edge.replay.cli import replay_command, simulate_command
from harvester_edge.report import report_command

CONFIG_ENV = "HARVESTER_EDGE_CONFIG"
SOURCE_DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "local.yaml"


def default_config_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return SOURCE_DEFAULT


class CliContext:
    """Handed to every command as ctx.obj; the config is loaded on first use."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path

    @cached_property
    def config(self) -> SiteConfig:
        return load_config(self.config_path)

    def override(self, name: str, value: object) -> None:
        """A global option given after a subcommand (`status --config X`): it wins over the one before."""
        setattr(self, name, value)
        self.__dict__.pop("config", None)  # loaded from the old path, if at all


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help=f"site config YAML (default: ${CONFIG_ENV}, else configs/local.yaml of this checkout)",
)
@click.version_option(package_name="harvester-edge")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """harvester-edge: keep an HPC site's batch system busy with MPI pilots for jumbo jobs.

    -c/--config may also follow the subcommand: `harvester-edge status --config site.yaml`."""
    ctx.obj = CliContext(config_path or default_config_path())


@cli.command()
@click.option("--for", "max_seconds", type=float, default=None, help="stop after this many seconds (tests, demos)")
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write every outside contact to this trace for `harvester-edge replay` (runs agents one at a time)",
)
@click.pass_obj
def run(obj: CliContext, max_seconds: float | None, record: Path | None) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    # heavy (APScheduler, FastAPI, uvicorn): loaded only by the commands that run the daemon, so that `cron`, which
    # starts every minute, and `status` stay quick
    from harvester_edge.daemon import Daemon

    sys.exit(Daemon(obj.config_path, record=record).run(max_seconds=max_seconds))


@cli.command()
@click.pass_obj
def cron(obj: CliContext) -> None:
    """Start the daemon in the background unless it runs already (safe to call from cron every minute)."""
    from harvester_edge.daemon import AlreadyRunning, Daemon, InstanceLock, daemonize  # heavy: see run

    config = obj.config
    probe = InstanceLock(config.lock_path)
    try:
        probe.acquire()
    except AlreadyRunning as exc:
        click.echo(f"harvester-edge: {exc}; nothing to do")
        return
    probe.release()
    if not daemonize(config.log_dir / "daemon.out"):
        click.echo(f"harvester-edge: daemon started for site {config.site}; logs in {config.log_dir}")
        return
    try:
        code = Daemon(obj.config_path, log_to_stderr=False).run()
    except AlreadyRunning:  # another cron start won the race between our probe and the daemon's lock
        code = 0
    except BaseException:  # nothing above us in a daemonized child: log, then exit
        logging.getLogger(__name__).exception("daemon failed")
        code = 1
    os._exit(code)


@cli.command()
@click.option("-q", "--queue", "queues", multiple=True, help="only this queue (repeatable; default: all)")
@click.option("--undo", is_flag=True, help="resume fetching and submitting")
@click.pass_obj
def drain(obj: CliContext, queues: tuple[str, ...], undo: bool) -> None:
    """Stop new fetches and submissions; running workers finish their work."""
    names = set_draining(obj.config, list(queues), draining=not undo)
    click.echo(f"{'resumed' if undo else 'draining'}: {', '.join(names)}")


@cli.command("kill-workers")
@click.option("--id", "worker_ids", type=int, multiple=True, help="worker id (repeatable)")
@click.option("-q", "--queue", default=None)
@click.option("--state", default=None, help="new, submitting, queued or running")
@click.option("--job", "panda_id", type=int, default=None, help="the workers of this PandaID")
@click.option("--all", "everything", is_flag=True, help="every unfinished worker")
@click.pass_obj
def kill_workers(
    obj: CliContext,
    worker_ids: tuple[int, ...],
    queue: str | None,
    state: str | None,
    panda_id: int | None,
    everything: bool,
) -> None:
    """Cancel workers: the sweeper asks their pilots to drain and cancels the batch jobs."""
    ids = request_kill(
        obj.config, worker_ids=list(worker_ids), queue=queue, state=state, panda_id=panda_id, everything=everything
    )
    click.echo(f"{len(ids)} worker(s) flagged for cancellation" + (f": {', '.join(map(str, ids))}" if ids else ""))


@click.command("serve", help="Run the central service in this process until SIGINT/SIGTERM.")
@click.option("--host", default=None, help="listen address (default: central.host)")
@click.option("--port", type=int, default=None, help="listen port (default: central.port; 0 = any free port)")
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="service processes sharing the listening socket (more than 1 needs central.db: postgresql://...)",
)
@click.pass_context
def central_serve(ctx: click.Context, host: str | None, port: int | None, workers: int) -> None:
    """`central serve`: the central service with the web monitor beside it (harvester_edge.server)."""
    from harvester_edge.server import serve_central  # heavy (FastAPI, uvicorn): only for this command; see run

    serve_central(central_settings(ctx), host, port, workers)


def _register_groups() -> None:
    cli.add_command(status_cmd, "status")
    cli.add_command(worker_group, "worker")
    central_group.add_command(central_serve, "serve")  # the service with the web monitor beside it
    cli.add_command(central_group, "central")
    cli.add_command(task_group, "task")
    errors_group.add_command(errors_summary, "summary")
    cli.add_command(errors_group, "errors")
    cli.add_command(demo, "demo")
    cli.add_command(replay_command, "replay")
    cli.add_command(simulate_command, "simulate")
    cli.add_command(report_command, "report")
    cli.add_command(alerts_group, "alerts")
    cli.add_command(logs_command, "logs")  # payload logs (README "Payload logs")


def _global_option_after_subcommand(ctx: click.Context, param: click.Parameter, value: object) -> object:
    if value is None or param.name is None:
        return value
    obj = ctx.find_object(CliContext)
    if obj is None:  # the command invoked on its own (a test's CliRunner): start from the defaults
        obj = ctx.obj = CliContext(default_config_path())
    obj.override(param.name, value)
    return value


def global_options(group: click.Group) -> list[click.Option]:
    """The group's own options a subcommand accepts too: all but the eager ones (--help, --version)."""
    return [p for p in group.params if isinstance(p, click.Option) and not p.is_eager]


def share_global_options(root: click.Group, command: click.Group | None = None) -> None:
    """Give every (nested) subcommand the root's global options, so `harvester-edge status --config X` works like
    `harvester-edge --config X status`. A subcommand's own option of the same name or flag is a programming error."""
    for sub in (command or root).commands.values():
        taken = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)} | {p.name for p in sub.params}
        for opt in global_options(root):
            if opt.name in taken:
                continue  # shared already (a command registered under two groups)
            clash = taken & {*opt.opts, *opt.secondary_opts}
            if clash:
                raise RuntimeError(f"command {sub.name!r} defines {sorted(clash)}, a global option of {root.name!r}")
            sub.params.append(
                click.Option(
                    [*opt.opts, *opt.secondary_opts, opt.name],
                    type=opt.type,
                    default=None,
                    help=opt.help,
                    expose_value=False,
                    callback=_global_option_after_subcommand,
                )
            )
        if isinstance(sub, click.Group):
            share_global_options(root, sub)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HarvesterEdgeError as exc:
        click.echo(f"harvester-edge: {exc}", err=True)
        sys.exit(2)
    except SystemExit:
        raise


_register_groups()
share_global_options(cli)
