"""The payload child process of a rank: reads one JSON request per line on stdin, runs the callable, answers.

Started by :mod:`jumbo.execute` as ``python -m jumbo.child``; it never touches MPI, so a payload that crashes or is
killed takes only this process down and the rank reports the range failed and starts a new child.
Request: {"callable", "first", "last", "output", "context"}; answer: {"ok", "code", "message", "cpu", "wall",
"start", "end"}. Requests queue up in the pipe: the rank may hand over the next range while this one runs.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback


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
    for line in sys.stdin.buffer:
        req = json.loads(line)
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
