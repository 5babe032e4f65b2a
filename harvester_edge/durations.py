"""Durations as operators write them in YAML: 90, "90s", "15m", "2h", "1d", "1h30m", "2 hours"."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
EXPECTED = 'a duration such as 90, "90s", "15m", "2h", "1h30m" or "2 hours"'


def parse_duration(value: object) -> float:
    """Seconds in `value`; raises ValueError with the expected forms when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"expected {EXPECTED}, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {EXPECTED}, got {type(value).__name__} {value!r}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if not match or match.group(2) not in _UNITS:
            raise ValueError(f"expected {EXPECTED}, got {value!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"expected {EXPECTED}, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """Short human form for tables: 3725 -> '1h02m'."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# Pydantic field types: durations in seconds.
Duration = Annotated[float, BeforeValidator(parse_duration)]
IntDuration = Annotated[int, BeforeValidator(lambda v: int(parse_duration(v)))]
