"""The clock seam: agents get `now` from here, so tests and offline replay can pass time in."""

from __future__ import annotations

import threading
import time


class Clock:
    """Wall-clock time. `now()` is epoch seconds; `sleep()` returns early (True) when `stop` is set."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        if stop is None:
            time.sleep(seconds)
            return False
        return stop.wait(seconds)


class FixedClock(Clock):
    """A clock that only moves when told to (tests, virtual time in replay and simulation)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        return self.now()

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        self.advance(seconds)
        return bool(stop and stop.is_set())
