"""Example payloads with the jumbo interface ``run(first_event, last_event, output_path, context)``.

``context`` holds task_id, panda_id, rank, seed, event_range_id and ``args`` (the payload spec's "args").
A payload signals failure by raising (``PayloadError`` carries an error code) or, as a command, by a non-zero exit.

- :func:`simulate`: a numpy simulation whose output for an event depends only on (task id, event number);
  :func:`expected` recomputes one event and :func:`verify` checks a whole output file.
- :func:`sleep`: ``seconds_per_event`` of sleep per event (dispatch benchmarks).
- :func:`allocate`: holds ``mb`` MB really in use for ``seconds`` (memory measured by the pilot: scouts).
- :func:`noop`: does nothing (dispatch overhead benchmark; payload spec "output": false).
- :func:`chatty`: prints lines to stdout and stderr (payload logs, jumbo.paylog), then runs ``then``.
- :func:`fail`: fails the ranges holding ``fail_events`` (raise with ``code``, ``exit``, ``kill`` = SIGKILL itself,
  or ``segfault``), and runs ``then`` (default :func:`simulate`) for the others.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

SIM_DEFAULTS = {"size": 4096, "rounds": 20}
COLUMNS = 4  # event number, mean, std, max


class PayloadError(Exception):
    """A payload failed on purpose or by design; ``code`` goes to the event status errorCode."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = int(code)


def resolve(name: str) -> Callable:
    """'module:function' -> the function (raises ValueError/ImportError/AttributeError with the name)."""
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"payload callable {name!r} must look like 'module:function'")
    return getattr(importlib.import_module(module), attr)


def _sim_args(args: dict | None) -> tuple[int, int]:
    merged = {**SIM_DEFAULTS, **(args or {})}
    return int(merged["size"]), int(merged["rounds"])


def expected(
    task_id: int, event: int, size: int = SIM_DEFAULTS["size"], rounds: int = SIM_DEFAULTS["rounds"]
) -> np.ndarray:
    """The output row of one event: a function of (task_id, event) and the work size only."""
    import numpy as np  # here, not at the top: the sleep/noop payloads' children start faster without numpy

    rng = np.random.default_rng([int(task_id), int(event)])
    x = rng.standard_normal(size)
    for _ in range(rounds):  # CPU work whose size is configurable
        x = np.tanh(x * 1.5 + 0.1) + 0.01 * np.sin(x * 3.0)
    return np.array([event, x.mean(), x.std(), x.max()], dtype=np.float64)


def simulate(first_event: int, last_event: int, output_path: str, context: dict) -> dict:
    """Simulate events first..last (inclusive) and save an (n, 4) float64 .npy array to output_path."""
    import numpy as np  # here, not at the top: the sleep/noop payloads' children start faster without numpy

    size, rounds = _sim_args(context.get("args"))
    task_id = int(context["task_id"])
    rows = np.stack([expected(task_id, ev, size, rounds) for ev in range(first_event, last_event + 1)])
    with open(output_path, "wb") as fh:  # a handle: np.save must not append ".npy" to the name
        np.save(fh, rows)
    return {"nEvents": last_event - first_event + 1}


def verify(path: str, task_id: int, first_event: int, last_event: int, args: dict | None = None) -> bool:
    """True if the file at ``path`` holds exactly what :func:`simulate` computes for these events."""
    import numpy as np  # here, not at the top: the sleep/noop payloads' children start faster without numpy

    size, rounds = _sim_args(args)
    data = np.load(path)
    want = np.stack([expected(task_id, ev, size, rounds) for ev in range(first_event, last_event + 1)])
    return data.shape == want.shape and bool(np.array_equal(data, want))


def sleep(first_event: int, last_event: int, output_path: str, context: dict) -> None:
    """Sleep ``seconds_per_event`` (default 0.01) per event, then write one line; with args {"write": false} only
    sleep (an event of exactly that length: give the payload spec "output": false too)."""
    args = context.get("args") or {}
    time.sleep(float(args.get("seconds_per_event", 0.01)) * (last_event - first_event + 1))
    if args.get("write", True):
        with open(output_path, "w") as fh:
            fh.write(f"{first_event} {last_event}\n")


def allocate(first_event: int, last_event: int, output_path: str, context: dict) -> None:
    """Hold ``mb`` MB of memory really in use (every page written) for ``seconds`` (default 1), then write one line:
    a payload whose PSS the pilot's monitor measures (scouts and brokerage by memory)."""
    args = context.get("args") or {}
    block = bytearray(int(float(args.get("mb", 100)) * 1024 * 1024))
    for i in range(0, len(block), 4096):  # touch each page: resident, so it counts in RSS and PSS
        block[i] = 1
    time.sleep(float(args.get("seconds", 1.0)))
    with open(output_path, "w") as fh:
        fh.write(f"{first_event} {last_event} {len(block) >> 20}\n")
    del block


def noop(first_event: int, last_event: int, output_path: str, context: dict) -> None:
    """Do nothing; with args {"touch": true}, create the (empty) output file. Without it, give the payload spec
    "output": false, so the pilot does not look for an output (creating a file costs ~0.7 ms on some disks)."""
    if (context.get("args") or {}).get("touch"):
        open(output_path, "wb").close()


def fail(first_event: int, last_event: int, output_path: str, context: dict) -> Any:
    """Fail ranges that hold one of ``fail_events``; run ``then`` for the others.

    args: fail_events (list of ints), code (int, default 42), mode (raise | exit | kill | segfault | hang: sleep
    without output or CPU until killed, a looping payload), then ("module:function", default jumbo.payloads:simulate).
    """
    args = context.get("args") or {}
    hit = [ev for ev in args.get("fail_events", []) if first_event <= ev <= last_event]
    if hit:
        code = int(args.get("code", 42))
        mode = args.get("mode", "raise")
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "segfault":
            ctypes.string_at(0)
        elif mode == "exit":
            os._exit(code)
        elif mode == "hang":
            while True:
                time.sleep(3600)
        raise PayloadError(code, f"event {hit[0]} fails on purpose (fail payload, mode {mode})")
    return resolve(args.get("then", "jumbo.payloads:simulate"))(first_event, last_event, output_path, context)


def chatty(first_event: int, last_event: int, output_path: str, context: dict) -> Any:
    """Print ``lines`` (default 1) lines per event to stdout (print) and one per event to stderr (a raw write to
    descriptor 2, as C code would), each naming the event and the range, padded to ``pad`` characters (default 0);
    then run ``then`` (default :func:`sleep` with its args)."""
    args = context.get("args") or {}
    lines, pad = int(args.get("lines", 1)), int(args.get("pad", 0))
    rid = context.get("event_range_id")
    for ev in range(first_event, last_event + 1):
        for i in range(lines):
            print(f"out event {ev} line {i} range {rid} " + "x" * pad)
        os.write(2, f"err event {ev} range {rid}\n".encode())
    return resolve(args.get("then", "jumbo.payloads:sleep"))(first_event, last_event, output_path, context)
