"""CLI groups the main `harvester-edge` command registers: central, task, errors.

They read the site config from the click context (`ctx.obj.config.central`, db resolved). Embedded mode uses
the service layer on the central DB file directly (SQLite WAL: safe next to a running daemon); remote mode
calls the service over HTTP with the harvester's token.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harvester_edge.errors import HarvesterEdgeError
from harvester_edge.seams.http import HttpTransport

from .classify import CLASSES, STATUSES
from .client import CentralClient
from .paylogs import LogFilter
from .service import CentralService
from .settings import db_path, db_target
from .store.database import SCHEMA_VERSION, open_database
from .store.pg import redact
from .taskspec import load_task_file
from .tokens import TokenAuthority, list_keys, load_or_create_secret


def _settings(ctx: click.Context):
    try:
        return ctx.obj.config.central
    except AttributeError as exc:
        raise click.ClickException("no site config loaded: pass --config SITE.yaml to harvester-edge") from exc


class _Remote:
    """The same operations over /api/v1 (mode: remote)."""

    def __init__(self, settings) -> None:
        self.client = CentralClient(
            HttpTransport(settings.url, settings.request_timeout), token_file=settings.tokens.token_file
        )

    def submit_task(self, spec) -> int:
        return self.client.call("POST", "task/submit", body=spec.model_dump(exclude_none=True))["task_id"]

    def list_tasks(self) -> list:
        return self.client.call("GET", "task/list")

    def show_task(self, task_id: int) -> dict:
        return self.client.call("GET", "task/show", params={"task_id": task_id})

    def kill_task(self, task_id: int) -> str:
        return self.client.call("POST", "task/kill", body={"task_id": task_id})["status"]

    def retry_task(self, task_id: int) -> str:
        return self.client.call("POST", "task/retry", body={"task_id": task_id})["status"]

    def set_task_dispatch(
        self, task_id: int, priority: int | None, share: float | None, clear_share: bool, who: str
    ) -> dict:
        body = {"task_id": task_id, "priority": priority, "share": share, "clear_share": clear_share}
        return self.client.call("POST", "task/set", body={k: v for k, v in body.items() if v is not None})

    def list_errors(self, status: str | None = None) -> list:
        return self.client.call("GET", "errors/list", params={"status": status} if status else {})

    def suggest_error_rule(self, panda_id: int) -> dict:
        return self.client.call("GET", "errors/suggest", params={"panda_id": panda_id})

    def error_history(self, rule_id: int | None = None) -> list:
        return self.client.call("GET", "errors/history", params={"rule_id": rule_id} if rule_id is not None else {})

    def add_error_rule(self, source: str, code: int, pattern: str, klass: str, status: str, who: str) -> int:
        body = {"source": source, "code": code, "diag_pattern": pattern, "class": klass, "status": status}
        return self.client.call("POST", "errors/add", body=body)["id"]

    def edit_error_rule(self, rule_id: int, changes: dict, who: str) -> dict:
        body = {"id": rule_id, **{k: v for k, v in changes.items() if v is not None}}
        return self.client.call("POST", "errors/edit", body=body)

    def promote_error(self, rule_id: int, klass: str | None, who: str) -> dict:
        return self.edit_error_rule(rule_id, {"status": "confirmed", "class": klass}, who)

    def delete_error_rule(self, rule_id: int, who: str) -> dict:
        return self.client.call("POST", "errors/delete", body={"id": rule_id})

    def work_shortage(self) -> dict:
        return self.client.work_shortage()

    def set_work_shortage(self, mode: str) -> dict:
        return self.client.call("POST", "task/set_work_shortage", body={"mode": mode})

    def payload_logs(self, flt: LogFilter) -> dict:
        return self.client.payload_logs(**flt.query())

    def close(self) -> None:
        self.client.transport.close()


def _service(ctx: click.Context, local_only: bool = False):
    settings = _settings(ctx)
    if settings.mode == "remote" and not local_only:
        return _Remote(settings)

    return CentralService.open(db_target(settings), settings)


def _run(ctx: click.Context, fn, local_only: bool = False) -> Any:
    svc = None
    try:
        svc = _service(ctx, local_only)
        return fn(svc)
    except HarvesterEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if svc is not None:
            svc.close()


def _emit(data: Any, as_json: bool, columns: list[str], title: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[str(row.get(c, "")) for c in columns])
    Console(width=160).print(table)


# -- central --------------------------------------------------------------------------------------------------
@click.group("central", help="The embedded PanDA-compatible central service.")
def central_group() -> None:
    """`serve` is added by harvester_edge.cli from harvester_edge.server (the service with the web monitor)."""


@central_group.group("db", help="The central service's database (central.db: a SQLite file or postgresql://...).")
def db_group() -> None:
    pass


@db_group.command("migrate", help="Create the schema or bring it up to this version (both backends); then exit.")
@click.pass_context
def db_migrate_cmd(ctx: click.Context) -> None:

    settings = _settings(ctx)
    target = db_target(settings)
    try:
        open_database(target, settings.files_dir, settings.pool).close()
    except HarvesterEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"central DB {redact(str(target))}: schema version {SCHEMA_VERSION}, up to date")


@central_group.command("issue-token", help="Print an initial token and secret key for a client (pilot/harvester).")
@click.argument("client_name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    default=["pilot"],
    show_default=True,
    type=click.Choice(["pilot", "harvester", "admin"]),
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def issue_token_cmd(ctx: click.Context, client_name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    settings = _settings(ctx)
    token, key = _run(
        ctx, lambda svc: _authority(settings, svc).pilot_credentials(client_name, scopes), local_only=True
    )
    click.echo(json.dumps({"token": token, "key": key}) if as_json else f"token: {token}\nkey:   {key}")


def _authority(settings, svc):
    secret = load_or_create_secret(Path(settings.tokens.secret_file or db_path(settings).with_name("central.secret")))
    return TokenAuthority(svc.db, settings.tokens, secret, svc.clock)


@central_group.command(
    "revoke",
    help="Revoke every key of a client, and every key minted from them: all their "
    "tokens are refused at once (pilots of a harvester included).",
)
@click.argument("client_name")
@click.pass_context
def revoke_cmd(ctx: click.Context, client_name: str) -> None:
    settings = _settings(ctx)
    count = _run(ctx, lambda svc: _authority(settings, svc).revoke(client_name), local_only=True)
    if not count:
        raise click.ClickException(f"no unrevoked key of client {client_name!r}: see `harvester-edge central keys`")
    click.echo(f"revoked {count} key(s) of {client_name} and of the keys minted from them")


KEY_COLUMNS = ["kid", "client", "scope", "created", "expires", "revoked", "parent"]


@central_group.command("keys", help="Every token key: kid, client, created, expires, revoked (newest first).")
@click.option("--client", "client_name", default=None, help="only this client's keys")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_cmd(ctx: click.Context, client_name: str | None, as_json: bool) -> None:
    rows = _run(ctx, lambda svc: list_keys(svc.db), local_only=True)
    rows = [r for r in rows if client_name is None or r["client"] == client_name]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return

    def when(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")

    _emit(
        [
            {
                **r,
                "created": when(r["created"]),
                "expires": when(r["expires"]),
                "revoked": "yes" if r["revoked"] else "",
            }
            for r in rows
        ],
        False,
        KEY_COLUMNS,
        "token keys",
    )


@central_group.command(
    "shortage",
    help="Show or set WORK_SHORTAGE: on (declared), off (never), auto (while no work waits; the default). In a "
    "shortage harvesters give opportunistic queues no new jobs or workers and keep pledged queues within the pledge.",
)
@click.argument("mode", required=False, type=click.Choice(["on", "off", "auto"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def shortage_cmd(ctx: click.Context, mode: str | None, as_json: bool) -> None:
    state = _run(ctx, lambda svc: svc.work_shortage() if mode is None else svc.set_work_shortage(mode))
    if as_json:
        click.echo(json.dumps(state))
        return
    click.echo(f"work shortage: {'yes' if state['shortage'] else 'no'} (mode {state['mode']}: {state['reason']})")


# -- task -----------------------------------------------------------------------------------------------------
TASK_COLUMNS = [
    "task_id",
    "name",
    "status",
    "n_events",
    "events_finished",
    "ranges",
    "n_jobs",
    "max_attempts",
    "priority",
    "share",
]


@click.group("task", help="Submit and manage tasks of the central service.")
def task_group() -> None:
    pass


@task_group.command("submit", help="Submit a task definition (YAML).")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def task_submit(ctx: click.Context, file: Path, as_json: bool) -> None:
    try:
        spec = load_task_file(file)
    except HarvesterEdgeError as exc:
        raise click.ClickException(str(exc)) from exc
    task_id = _run(ctx, lambda svc: svc.submit_task(spec))
    click.echo(json.dumps({"task_id": task_id}) if as_json else f"task {task_id} submitted ({spec.name})")


@task_group.command("list", help="All tasks with their range counts.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def task_list(ctx: click.Context, as_json: bool) -> None:
    _emit(_run(ctx, lambda svc: svc.list_tasks()), as_json, TASK_COLUMNS, "tasks")


@task_group.command("show", help="One task, its ranges and jobs.")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def task_show(ctx: click.Context, task_id: int, as_json: bool) -> None:
    data = _run(ctx, lambda svc: svc.show_task(task_id))
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    _emit(data, False, TASK_COLUMNS, f"task {task_id}")
    if data.get("estimates"):
        _emit(data["estimates"], False, ESTIMATE_COLUMNS, "estimates (declared, or measured by the scouts)")
    _emit(
        data.get("jobs", []),
        False,
        [
            "panda_id",
            "status",
            "attempt_nr",
            "command",
            "site",
            "computing_element",
            "worker_id",
            "n_events",
            "dispatcher_error_code",
            "dispatcher_error_diag",
        ],
        "jobs",
    )


ESTIMATE_COLUMNS = [
    "scouts",
    "scouts_done",
    "scouting",
    "seconds_per_event",
    "seconds_per_event_from",
    "memory_per_rank_mb",
    "memory_from",
]


@task_group.command("kill", help="Abort a task: cancel its ranges, tell running pilots to stop.")
@click.argument("task_id", type=int)
@click.pass_context
def task_kill(ctx: click.Context, task_id: int) -> None:
    click.echo(f"task {task_id}: {_run(ctx, lambda svc: svc.kill_task(task_id))}")


@task_group.command("retry", help="Reopen a failed or aborted task: failed/cancelled ranges become ready.")
@click.argument("task_id", type=int)
@click.pass_context
def task_retry(ctx: click.Context, task_id: int) -> None:
    click.echo(f"task {task_id}: {_run(ctx, lambda svc: svc.retry_task(task_id))}")


def local_user() -> str:
    """Who runs this command, for the records of changes made from the CLI (embedded mode)."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return f"uid {os.getuid()} (cli)"


def _share(text: str | None) -> tuple[float | None, bool]:
    """--share: a fraction in (0, 1], or 'none' to remove the limit -> (share, clear)."""
    if text is None:
        return None, False
    if text.strip().lower() == "none":
        return None, True
    try:
        return float(text), False
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not a fraction in (0, 1] nor 'none'", param_hint="--share") from exc


@task_group.command(
    "set",
    help="Change a defined or running task's priority (dispatch order: higher first) and/or share (the fraction "
    "of the service's running jobs it may hold while other tasks wait; 'none': no limit). Takes effect at the "
    "next job dispatch.",
)
@click.argument("task_id", type=int)
@click.option("--priority", type=int, default=None, help="Dispatch priority, -1000000..1000000 (default 0).")
@click.option("--share", "share_text", default=None, help="A fraction in (0, 1] of the running jobs, or 'none'.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def task_set(ctx: click.Context, task_id: int, priority: int | None, share_text: str | None, as_json: bool) -> None:
    if priority is None and share_text is None:
        raise click.UsageError("give --priority and/or --share")
    share, clear = _share(share_text)
    out = _run(ctx, lambda svc: svc.set_task_dispatch(task_id, priority, share, clear, local_user()))
    if as_json:
        click.echo(json.dumps(out))
        return
    shown = "none" if out["share"] is None else out["share"]
    click.echo(f"task {task_id}: priority {out['priority']}, share {shown}")


# -- errors ---------------------------------------------------------------------------------------------------
ERROR_COLUMNS = ["id", "source", "code", "diag_pattern", "class", "status", "hits", "example"]


@click.group(
    "errors",
    help="The error classification rules (class 'system' does not use up attempts, 'fatal' is never retried).",
)
def errors_group() -> None:
    pass


@errors_group.command("list", help="All classifications.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def errors_list(ctx: click.Context, as_json: bool) -> None:
    _emit(_run(ctx, lambda svc: svc.list_errors()), as_json, ERROR_COLUMNS, "error classes")


@errors_group.command("suggested", help="Classifications waiting for an operator's review.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def errors_suggested(ctx: click.Context, as_json: bool) -> None:
    _emit(
        _run(ctx, lambda svc: svc.list_errors("suggested")),
        as_json,
        ERROR_COLUMNS,
        "suggested error classes",
    )


@errors_group.command("promote", help="Confirm a suggested classification (optionally with another class).")
@click.argument("rule_id", type=int)
@click.option("--class", "klass", type=click.Choice(CLASSES), default=None)
@click.pass_context
def errors_promote(ctx: click.Context, rule_id: int, klass: str | None) -> None:
    row = _run(ctx, lambda svc: svc.promote_error(rule_id, klass, local_user()))
    click.echo(f"classification {row['id']} ({row['source']} {row['code']}) confirmed as {row['class']}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@errors_group.command(
    "suggest", help="A rule pre-filled from a failed job (source, code, diag pattern); --add stores it."
)
@click.option("--job", "panda_id", type=int, required=True, help="The PandaID of a failed job.")
@click.option("--class", "klass", type=click.Choice(CLASSES), default=None, help="The class to add it with.")
@click.option("--add", "add", is_flag=True, help="Add the suggested rule (confirmed) at once.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def errors_suggest(ctx: click.Context, panda_id: int, klass: str | None, add: bool, as_json: bool) -> None:
    rule = _run(ctx, lambda svc: svc.suggest_error_rule(panda_id))
    if klass:
        rule["class"] = klass
    if add:
        rule["id"] = _run(
            ctx,
            lambda svc: svc.add_error_rule(
                rule["source"], rule["code"], rule["diag_pattern"], rule["class"], "confirmed", local_user()
            ),
        )
    if as_json:
        click.echo(json.dumps(rule, indent=2, default=str))
        return
    click.echo(f"job {panda_id} failed with {rule['source']} {rule['code']}: {rule['diag']}")
    for other in rule["existing"]:
        click.echo(
            f"  existing rule {other['id']}: {other['diag_pattern']!r} -> {other['class']} "
            f"({other['status']}, {other['hits']} hits)"
        )
    if add:
        click.echo(
            f"rule {rule['id']} added: {rule['source']} {rule['code']} {rule['diag_pattern']!r} -> {rule['class']}"
        )
    else:
        click.echo(
            f"harvester-edge errors add --source {rule['source']} --code {rule['code']} "
            f"--pattern {_quote(rule['diag_pattern'])} --class {rule['class']}"
        )


@errors_group.command("add", help="Add a rule (the same source, code and pattern: its class/status change).")
@click.option("--source", required=True, help="pilot, exe, event, jobDispatcher, ...")
@click.option("--code", type=int, required=True)
@click.option("--pattern", "pattern", default="", help="A regular expression searched in the diag ('' matches any).")
@click.option("--class", "klass", type=click.Choice(CLASSES), required=True)
@click.option("--status", type=click.Choice(STATUSES), default="confirmed", show_default=True)
@click.pass_context
def errors_add(ctx: click.Context, source: str, code: int, pattern: str, klass: str, status: str) -> None:
    rule_id = _run(ctx, lambda svc: svc.add_error_rule(source, code, pattern, klass, status, local_user()))
    click.echo(f"rule {rule_id}: {source} {code} {pattern!r} -> {klass} ({status})")


@errors_group.command("edit", help="Change some fields of a rule.")
@click.argument("rule_id", type=int)
@click.option("--source", default=None)
@click.option("--code", type=int, default=None)
@click.option("--pattern", "pattern", default=None, help="A regular expression searched in the diag.")
@click.option("--class", "klass", type=click.Choice(CLASSES), default=None)
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.pass_context
def errors_edit(
    ctx: click.Context,
    rule_id: int,
    source: str | None,
    code: int | None,
    pattern: str | None,
    klass: str | None,
    status: str | None,
) -> None:
    changes = {"source": source, "code": code, "diag_pattern": pattern, "class": klass, "status": status}
    if all(v is None for v in changes.values()):
        raise click.UsageError("give at least one of --source --code --pattern --class --status")
    row = _run(ctx, lambda svc: svc.edit_error_rule(rule_id, changes, local_user()))
    click.echo(
        f"rule {row['id']}: {row['source']} {row['code']} {row['diag_pattern']!r} -> {row['class']} ({row['status']})"
    )


@errors_group.command("delete", help="Remove a rule.")
@click.argument("rule_id", type=int)
@click.pass_context
def errors_delete(ctx: click.Context, rule_id: int) -> None:
    row = _run(ctx, lambda svc: svc.delete_error_rule(rule_id, local_user()))
    click.echo(f"rule {rule_id} deleted ({row['source']} {row['code']} {row['diag_pattern']!r} -> {row['class']})")


@errors_group.command("history", help="Who changed which rule when, newest first.")
@click.option("--rule", "rule_id", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def errors_history(ctx: click.Context, rule_id: int | None, as_json: bool) -> None:
    rows = _run(ctx, lambda svc: svc.error_history(rule_id))
    shown = [{**r, "at": datetime.fromtimestamp(r["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")} for r in rows]
    _emit(shown if not as_json else rows, as_json, ["at", "who", "rule_id", "action", "before", "after"], "changes")
