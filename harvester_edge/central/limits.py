"""Caps on what the service stores, and the checks both dialects (and the CLI) pass through before writing.

Names and ids over MAX_NAME are refused; error diagnostics are truncated to MAX_DIAG, as PanDA truncates them to
its 500-character columns (JobSpec.pilotErrorDiag, exeErrorDiag) rather than refusing a pilot's final report.
Integers stored by SQLite must fit 63 bits: BIG bounds every id and count.
"""

from __future__ import annotations

import json
from typing import Any, Literal, overload

from .errors import InvalidInput

BIG = 2**62
MAX_NAME = 256  # harvester, worker, site, node, client names and ids
MAX_STATE = 32  # job, worker and pilot states
MAX_DIAG = 500  # error diagnostics: truncated, not refused
MAX_ATTRS = 64 * 1024  # the JSON of a worker's or a harvester's extra attributes


@overload
def name(field: str, value: Any, required: Literal[True], max_len: int = MAX_NAME) -> str: ...
@overload
def name(field: str, value: Any, required: bool = False, max_len: int = MAX_NAME) -> str | None: ...
def name(field: str, value: Any, required: bool = False, max_len: int = MAX_NAME) -> str | None:
    """A name or id as stored text: a string (or an integer id), at most max_len characters, valid UTF-8."""
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{field} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"{field} must be a string, got {type(value).__name__} {value!r:.80}")
    text = str(value)
    if len(text) > max_len:
        raise InvalidInput(f"{field} is longer than {max_len} characters ({len(text)})")
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{field} is not valid UTF-8 text: {exc.reason}") from exc
    return text


def diag(value: Any) -> str:
    """An error diagnostic as stored: text, cut at MAX_DIAG characters, unencodable characters replaced."""
    text = "" if value is None else str(value)[:MAX_DIAG]
    return text.encode("utf-8", "replace").decode()


def attrs(field: str, value: Any) -> str:
    """Extra attributes as stored JSON text, at most MAX_ATTRS characters."""
    text = json.dumps(value, default=str)
    if len(text) > MAX_ATTRS:
        raise InvalidInput(f"{field} is {len(text)} characters of JSON: more than the limit of {MAX_ATTRS}")
    return text
