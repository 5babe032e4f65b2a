"""prmon-like monitoring: per rank, psutil samples of the rank and its payload children as a JSONL time series.

One line per sample in ``prmon.<rank>.jsonl`` in the access point (see jumbo.protocol); the maxima go into the
job report. Memory and CPU cover the rank process plus all its descendants (the payload children).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

FIELDS = ("rss", "pss", "vmem", "utime", "stime", "read_bytes", "write_bytes", "nprocs")
FIRST_SAMPLE_AFTER = 1.0  # seconds: a sample scans /proc for the children (~5 ms of CPU), which the ranks need
# while they start; a pilot that ends sooner takes its one sample when it stops


def sample(proc: psutil.Process) -> dict:
    """One sample of ``proc`` and its descendants (processes that vanish while sampled are skipped)."""
    total: dict[str, float] = dict.fromkeys(FIELDS, 0)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            with p.oneshot():
                mem = p.memory_full_info() if hasattr(p, "memory_full_info") else p.memory_info()
                cpu = p.cpu_times()
                try:
                    io = p.io_counters()
                except (psutil.AccessDenied, AttributeError):
                    io = None
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        total["rss"] += mem.rss
        total["pss"] += getattr(mem, "pss", mem.rss)
        total["vmem"] += mem.vms
        total["utime"] += cpu.user + (cpu.children_user if p is proc else 0.0)
        total["stime"] += cpu.system + (cpu.children_system if p is proc else 0.0)
        if io is not None:
            total["read_bytes"] += io.read_bytes
            total["write_bytes"] += io.write_bytes
        total["nprocs"] += 1
    return total


class Monitor:
    """A named thread writing one sample per ``interval``; ``stop()`` takes a last sample and returns the maxima."""

    def __init__(self, path: Path, rank: int, interval: float):
        self.path, self.rank, self.interval = Path(path), rank, max(0.05, float(interval))
        self.maxima = dict.fromkeys(FIELDS, 0)
        self._window_pss = 0  # the highest PSS since take_pss_peak() last ran (per-range peaks, for the scouts)
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{rank}", daemon=True)

    def start(self) -> Monitor:
        self._fh = open(self.path, "a")
        self._thread.start()
        return self

    def step(self, now: float | None = None) -> dict:
        record = {"time": now if now is not None else time.time(), "rank": self.rank, **sample(self._proc)}
        for key in FIELDS:
            self.maxima[key] = max(self.maxima[key], record[key])
        self._window_pss = max(self._window_pss, int(record["pss"]))
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        return record

    def take_pss_peak(self) -> int:
        """The highest PSS (bytes, the rank and its payload processes; psutil reads /proc/<pid>/smaps_rollup) of
        the samples since the last call, then start over: called at each range's end, it is that range's peak."""
        peak, self._window_pss = self._window_pss, 0
        return peak

    def _loop(self) -> None:
        if self._stop.wait(min(self.interval, FIRST_SAMPLE_AFTER)):
            return
        while True:
            try:
                self.step()
            except Exception:
                log.exception("rank %d: monitor sample failed; trying again next interval", self.rank)
            if self._stop.wait(self.interval):
                return

    def stop(self, last_sample: bool = False) -> dict:
        """Stop sampling and return the maxima. The pilot skips the last sample: with many ranks on few cores
        it delayed the end of the pilot by ~0.1 s (psutil reads smaps); the periodic samples give the maxima (a pilot
        that ended before the first one takes one here)."""
        self._stop.set()
        self._thread.join(timeout=10)
        if last_sample or not self.maxima["nprocs"]:
            try:
                self.step()
            except Exception:
                log.exception("rank %d: last monitor sample failed", self.rank)
        self._fh.close()
        return dict(self.maxima)
