"""Global options after the subcommand: `harvester-edge status --config X` works like `harvester-edge --config X
status`, for every command of the tree (a new command cannot forget it: it is walked here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml

from harvester_edge.cli import CliContext, cli, global_options
from helpers import local_queue

CLI = [sys.executable, "-m", "harvester_edge"]


def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = list(walk(cli))


def test_the_root_has_global_options_and_the_tree_is_walked():
    assert {o.name for o in global_options(cli)} >= {"config_path"}
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "status", "central serve", "task submit", "errors summary", "simulate", "replay"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_accepts_every_global_option(path: tuple[str, ...], command: click.Command):
    for option in global_options(cli):
        flags = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        assert {*option.opts, *option.secondary_opts} <= flags, f"`{' '.join(path)}` lacks {option.opts}"


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
@pytest.mark.parametrize("flag", ["--config", "-c"])
def test_config_after_the_subcommand_overrides_the_one_before(path: tuple[str, ...], command: click.Command, flag: str):
    """Parse `harvester-edge --config BEFORE PATH... --config AFTER` as click does, down the command chain (resilient:
    a command's missing arguments do not matter here), and look at the config the command would be handed."""
    obj = CliContext(Path("/before.yaml"))
    ctx = cli.make_context("harvester-edge", [], obj=obj, resilient_parsing=True)
    for depth, name in enumerate(path, 1):
        group = ctx.command
        assert isinstance(group, click.Group)
        sub = group.get_command(ctx, name)
        assert sub is not None
        args = [flag, "/after.yaml"] if depth == len(path) else []
        ctx = sub.make_context(name, args, parent=ctx, resilient_parsing=True)
    assert ctx.command is command
    assert ctx.find_object(CliContext) is obj and obj.config_path == Path("/after.yaml")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    config = tmp_path / "site.yaml"
    queue = local_queue("q1", max_queued_workers=2, max_running_workers=4)  # the config defaults
    config.write_text(
        yaml.safe_dump(
            {
                "site": "after-sub",
                "central": {"mode": "embedded", "trusted": True},
                "paths": {"work_dir": str(tmp_path / "work")},
                "queues": [queue],
            }
        )
    )
    return config


def he(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HARVESTER_EDGE_CONFIG"}
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_status_config_after_equals_before(site: Path, tmp_path: Path):
    before = he("--config", str(site), "status", "--json", cwd=tmp_path)
    after = he("status", "--config", str(site), "--json", cwd=tmp_path)
    short = he("status", "--json", "-c", str(site), cwd=tmp_path)
    assert before.returncode == after.returncode == short.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(after.stdout) == json.loads(before.stdout) == json.loads(short.stdout)
    assert json.loads(after.stdout)["site"] == "after-sub"  # not the default configs/local.yaml


def test_nested_command_and_drain_take_config_after(site: Path, tmp_path: Path):
    drained = he("drain", "--config", str(site), cwd=tmp_path)
    assert drained.returncode == 0 and "draining: q1" in drained.stdout, drained.stderr
    tasks = he("task", "list", "--json", "--config", str(site), cwd=tmp_path)
    assert tasks.returncode == 0 and json.loads(tasks.stdout) == [], tasks.stderr
    assert (tmp_path / "work").is_dir()  # the work dir of the config given after the subcommand


def test_config_after_the_subcommand_wins_and_a_missing_one_is_named(site: Path, tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    wins = he("--config", str(missing), "status", "--json", "--config", str(site), cwd=tmp_path)
    assert wins.returncode == 0 and json.loads(wins.stdout)["site"] == "after-sub", wins.stderr
    failed = he("status", "--config", str(missing), cwd=tmp_path)
    assert failed.returncode == 2 and str(missing) in failed.stderr and "not found" in failed.stderr
