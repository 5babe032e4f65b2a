"""The payload child process of a rank: reads one JSON request per line on stdin, runs the callable, answers.

Started by :mod:`jumbo.execute` as ``python -m jumbo.child``; it never touches MPI, so a payload that crashes or is
killed takes only this process down and the rank reports the range failed and starts a new child.
Request: {"callable", "first", "last", "output", "context"}; answer: {"ok", "code", "message", "cpu", "wall",
"start", "end"}. Requests queue up in the pipe: the rank may hand over the next range while this one runs.
The first request may carry "log" (jumbo.paylog.Settings): from then on the payload's stdout and stderr are pipes
whose lines go, tagged with each range, into the rank's JSON-lines payload log (jumbo.paylog).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback

from jumbo import paylog


def _answer(out, **fields) -> None:
    out.write(json.dumps(fields).encode() + b"\n")
    out.flush()


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when its rank dies, so a payload never outlives a killed pilot."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent or parent == 1:  # the rank died before prctl took effect
        os._exit(1)


TIMER_SLACK_NS = 1000  # Linux's default is 50 µs: a 10 ms sleep of a payload would end up to 0.5 % late


def _precise_timers() -> None:
    """Linux: wake the payload when its timers expire (a sleep, a poll timeout), within TIMER_SLACK_NS, instead of
    the default 50 µs of slack the kernel uses to batch wake-ups."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, TIMER_SLACK_NS, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def _capture(settings: paylog.Settings, rank: int) -> paylog.Pump:
    """From now on the payload's descriptors 1 and 2 are pipes to a pump thread writing the JSON-lines log."""
    sys.stdout.flush()
    sys.stderr.flush()
    streams, (out_w, err_w) = paylog.pipes()
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    # line buffered: a print reaches the log (and the monitor) as it happens, not at the range's end
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    return paylog.Pump(paylog.LogFile(settings, rank), streams, {}).start()


def _settle(pump: paylog.Pump | None) -> None:
    """At a range's end, before its answer: its last lines go out under its tags."""
    if pump is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        pump.drain()


def main() -> int:
    _die_with_parent()
    _precise_timers()
    # The rank decides when a payload must stop (deadline -> SIGKILL); a drain signal sent to the whole process
    # group or step must not kill ranges that still fit.
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # payload prints go to stderr, never into the answer channel
    sys.stdout = sys.stderr
    from jumbo.payloads import resolve  # after the dup: an import that prints cannot corrupt the channel

    cache: dict = {}
    pump: paylog.Pump | None = None
    worker: int | None = None
    for line in sys.stdin.buffer:
        req = json.loads(line)
        if pump is None and req.get("log"):
            settings = paylog.Settings.from_dict(req["log"])
            pump = _capture(settings, int(req["context"].get("rank", 0)))
            worker = settings.worker
        if pump is not None:
            pump.retag(**paylog.tags_of(req["context"], int(req["context"].get("rank", 0)), worker))
        start, t0, c0 = time.time(), time.monotonic(), time.process_time()
        try:
            fn = cache.get(req["callable"])
            if fn is None:
                fn = cache[req["callable"]] = resolve(req["callable"])
            fn(req["first"], req["last"], req["output"], req["context"])
        except Exception as exc:
            code = getattr(exc, "code", None)
            code = code if isinstance(code, int) and code != 0 else 1
            tb = traceback.format_exc(limit=3)
            sys.stderr.write(tb)
            _settle(pump)
            _answer(
                out,
                ok=False,
                code=code,
                message=f"{type(exc).__name__}: {exc}"[:500],
                cpu=time.process_time() - c0,
                wall=time.monotonic() - t0,
                start=start,
                end=time.time(),
            )
            continue
        _settle(pump)
        _answer(
            out,
            ok=True,
            code=0,
            message="",
            cpu=time.process_time() - c0,
            wall=time.monotonic() - t0,
            start=start,
            end=time.time(),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
