"""`harvester-edge alerts` (= `alerts list`): the alert states; `alerts test`: a test message to every webhook."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harvester_edge.alerts import view
from harvester_edge.alerts.delivery import send_test
from harvester_edge.durations import format_duration
from harvester_edge.store import alerts as alert_rows
from harvester_edge.store.readonly import open_readonly


def _read(config: Any, everything: bool) -> tuple[list[dict], dict[str, dict[str, int]], str | None]:
    if not config.db_path.exists():
        return [], {}, "no bookkeeping database yet: the daemon has not run with this config"
    conn = open_readonly(config.db_path)
    try:
        if not alert_rows.has_table(conn):
            return [], {}, "no alerts yet: the daemon has not run this version (its migration adds them)"
        return view.alert_list(conn, everything), view.deliveries(conn), None
    finally:
        conn.close()


def _show(obj: Any, everything: bool, as_json: bool) -> None:
    config = obj.config
    alerts, sent, note = _read(config, everything)
    if as_json:
        click.echo(json.dumps({"alerts": alerts, "deliveries": sent, "note": note}, indent=2, default=str))
        return
    console = Console() if Console().is_terminal else Console(width=200)
    if note:
        console.print(f"[yellow]{note}[/yellow]")
    now = time.time()
    table = Table(title=f"alerts of site {config.site}", title_justify="left")
    for col in ("rule", "key", "state", "severity", "value", "threshold", "since", "summary"):
        table.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for a in alerts:
        state = a["state"]
        style = {"firing": "bold red", "resolved": "green"}.get(state, "")
        since = f"{a['since_iso']} ({format_duration(now - a['since'])} ago)"
        table.add_row(
            a["rule"],
            a["key"] or "-",
            f"[{style}]{state}[/{style}]" if style else state,
            a["severity"],
            "" if a["value"] is None else f"{a['value']:g}",
            "" if a["threshold"] is None else f"{a['threshold']:g}",
            since,
            a["summary"],
        )
    console.print(table)
    firing = sum(1 for a in alerts if a["state"] == "firing")
    console.print(f"{firing} firing, {len(alerts) - firing} other")
    hooks = [h.name for h in config.alerts.webhooks]
    if not hooks:
        console.print("no webhooks configured (alerts.webhooks): states are kept and exported as metrics only")
    for name in hooks:
        counts = sent.get(name, {})
        console.print(
            f"webhook {name}: {counts.get('sent', 0)} sent, {counts.get('pending', 0)} pending, "
            f"{counts.get('dropped', 0)} dropped"
        )


@click.group("alerts", invoke_without_command=True)
@click.option("--all", "everything", is_flag=True, help="also the conditions that never fired (state ok)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def alerts_group(ctx: click.Context, everything: bool, as_json: bool) -> None:
    """Alert states (firing first), as the daemon's alerts agent keeps them; `alerts test` tries the webhooks."""
    if ctx.invoked_subcommand is None:
        _show(ctx.obj, everything, as_json)


@alerts_group.command("list")
@click.option("--all", "everything", is_flag=True, help="also the conditions that never fired (state ok)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def alerts_list(obj: Any, everything: bool, as_json: bool) -> None:
    """Alert states (firing first), as the daemon's alerts agent keeps them."""
    _show(obj, everything, as_json)


@alerts_group.command("test")
@click.option("--webhook", "names", multiple=True, help="only this webhook (repeatable; default: all)")
@click.pass_obj
def alerts_test(obj: Any, names: tuple[str, ...]) -> None:
    """Send a test message to every configured webhook and report each one's result (exit 1 if any failed)."""
    config = obj.config
    hooks = [h for h in config.alerts.webhooks if not names or h.name in names]
    unknown = sorted(set(names) - {h.name for h in config.alerts.webhooks})
    if unknown:
        raise click.UsageError(
            f"no webhook named {', '.join(unknown)} in {config.source} (alerts.webhooks); known: "
            f"{', '.join(h.name for h in config.alerts.webhooks) or 'none'}"
        )
    if not hooks:
        raise click.ClickException(f"{config.source}: alerts.webhooks is empty: no webhook to test")
    failed = 0
    for hook in hooks:
        started = time.monotonic()
        error = send_test(hook, config.site, time.time())
        took = time.monotonic() - started
        if error is None:
            click.echo(f"{hook.name} ({hook.format}): ok in {took:.2f}s")
        else:
            failed += 1
            click.echo(f"{hook.name} ({hook.format}): FAILED in {took:.2f}s: {error}")
    if failed:
        raise click.ClickException(f"{failed} of {len(hooks)} webhook(s) failed")
