"""Read YAML files for operators and turn validation failures into messages that point at the line.

Shared by the site config and the task files: `load_yaml_mapping` reads a file into a dict plus a map from key path to
line number; `describe_validation_error` renders a pydantic ValidationError as one line per problem:
    FILE:LINE: key.path[0].name: what is wrong (expected ..., got ...)
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from harvester_edge.errors import ConfigError

KeyPath = tuple[Any, ...]


def load_yaml_mapping(path: Path, what: str = "file") -> tuple[dict, dict[KeyPath, int]]:
    """The mapping at the top of a YAML file and the line of every key; ConfigError if it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what}: {exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None or node is None:  # an empty document composes to no node and loads to None
        raise ConfigError(f"{path}: the {what} is empty; expected a mapping of keys (see configs/ for examples)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top of the {what}, got a {type(data).__name__}")
    lines: dict[KeyPath, int] = {}
    _collect_lines(node, (), lines)
    return data, lines


def _collect_lines(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            lines[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            _collect_lines(item, prefix + (index,), lines)


def format_key_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _data_path(loc: KeyPath, data: Any, keep_last: bool) -> KeyPath:
    """The part of a pydantic error location that names keys in the input (drops union/type tags)."""
    out: list[Any] = []
    current = data
    for i, part in enumerate(loc):
        if (isinstance(current, list) and isinstance(part, int) and part < len(current)) or (
            isinstance(current, dict) and part in current
        ):
            current = current[part]
        elif keep_last and i == len(loc) - 1:
            pass
        else:
            break
        out.append(part)
    return tuple(out)


def _model_at(model: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` (for "did you mean" suggestions)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
        return None
    return annotation


def describe_validation_error(
    exc: ValidationError, path: Path, lines: dict[KeyPath, int], model: type[BaseModel], data: Any
) -> str:
    """One line per problem, each with file, line, key path, the problem and the expectation."""
    problems = []
    for err in exc.errors(include_url=False):
        kind = err["type"]
        loc = tuple(err["loc"])
        key_path = _data_path(loc, data, keep_last=kind in ("missing", "extra_forbidden"))
        line = _line_for(key_path, lines)
        where = f"{path}:{line}" if line else str(path)
        if kind == "extra_forbidden":
            parent = _model_at(model, key_path[:-1])
            known = list(parent.model_fields) if parent else []
            known = [k for k in known if k != "source"]
            hint = difflib.get_close_matches(str(key_path[-1]), known, n=1)
            message = f"unknown key {key_path[-1]!r}"
            message += (
                f"; did you mean {hint[0]!r}?" if hint else (f"; known keys: {', '.join(known)}" if known else "")
            )
        elif kind == "missing":
            message = "missing required key"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and kind not in ("model_type",) and not message.endswith(repr(err["input"])):
                message += f" (got {err['input']!r})"
        problems.append(f"{where}: {format_key_path(key_path)}: {message}")
    return "\n".join(problems)


def _line_for(key_path: KeyPath, lines: dict[KeyPath, int]) -> int | None:
    for end in range(len(key_path), 0, -1):
        if key_path[:end] in lines:
            return lines[key_path[:end]]
    return None
