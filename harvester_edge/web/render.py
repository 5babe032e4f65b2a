"""Jinja2 environment of the monitor: templates shipped in the package, autoescaped, a few display filters."""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from harvester_edge.durations import format_duration

from .charts import human

TEMPLATES = Path(__file__).with_name("templates")


def ts(value: Any) -> str:
    """Epoch seconds -> 'YYYY-MM-DD HH:MM:SS' (UTC); '' for nothing."""
    if not isinstance(value, (int, float)) or value <= 0:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    except (OverflowError, OSError, ValueError):  # inf, nan or past year 9999: not a time to show
        return "?"


def duration(seconds: Any) -> str:
    return format_duration(seconds) if isinstance(seconds, (int, float)) else ""


def counts(value: Any) -> str:
    """{state: n} -> 'running=2 finished=5'."""
    if not isinstance(value, dict) or not value:
        return ""
    return " ".join(f"{k}={v}" for k, v in sorted(value.items()))


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=ts,
        duration=duration,
        counts=counts,
        human=human,
        pretty=lambda v: json.dumps(v, indent=1, sort_keys=True, default=str),
        safe_svg=lambda s: Markup(s),
    )  # charts.py escapes every label itself
    return env


def render(template: str, context: dict[str, Any]) -> str:
    return environment().get_template(template).render(**context)
