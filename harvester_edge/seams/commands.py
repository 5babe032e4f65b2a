"""The one seam through which the appliance runs outside commands (sbatch, squeue, bsub, ...).

Every call returns a `CommandResult` (argv, stdin, stdout, stderr, exit code, duration, timed_out) and never raises
for a non-zero exit: callers parse. Offline replay records them by wrapping a runner (replay.recorder.RecordingRunner);
`RecordedRunner` serves recorded results back, so plugins are tested against real outputs without the real tool.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from harvester_edge import metrics
from harvester_edge.errors import HarvesterEdgeError

log = logging.getLogger(__name__)


class CommandNotFound(HarvesterEdgeError, FileNotFoundError):
    """The executable of a command is not installed or not on PATH; install it or fix PATH in the site config."""


class ReplayMismatch(HarvesterEdgeError):
    """A replayed run asked for a command the recording does not have next; the trace and the code disagree."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    stdin: str | None
    stdout: str
    stderr: str
    returncode: int
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def to_dict(self) -> dict:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> CommandResult:
        return cls(
            argv=tuple(data["argv"]),
            stdin=data.get("stdin"),
            stdout=data.get("stdout", ""),
            stderr=data.get("stderr", ""),
            returncode=int(data.get("returncode", 0)),
            duration=float(data.get("duration", 0.0)),
            timed_out=bool(data.get("timed_out", False)),
        )


class _Deadlines:
    """One thread that kills the process groups of commands past their timeout (a timer thread per command cost
    ~110 µs of a ~4 ms sbatch). Finished commands are only marked: the thread drops them when their deadline comes,
    so registering a later deadline than the earliest one does not wake it."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int]] = []  # (deadline, seq, process group)
        self._live: dict[int, threading.Event] = {}  # seq -> set when the command was killed
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, pgid: int, timeout: float) -> tuple[int, threading.Event]:
        expired = threading.Event()
        with self._cond:
            seq = next(self._seq)
            deadline = time.monotonic() + timeout
            earliest = self._heap[0][0] if self._heap else None
            heapq.heappush(self._heap, (deadline, seq, pgid))
            self._live[seq] = expired
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="command-deadlines", daemon=True)
                self._thread.start()
            elif earliest is None or deadline < earliest:
                self._cond.notify()
        return seq, expired

    def done(self, seq: int) -> None:
        with self._cond:
            self._live.pop(seq, None)

    def _loop(self) -> None:
        with self._cond:
            while True:
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, seq, pgid = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                expired = self._live.pop(seq, None)
                if expired is not None:
                    expired.set()
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


_DEADLINES = _Deadlines()
# a forked child has no deadline thread (and maybe a lock another thread held): it starts afresh
os.register_at_fork(after_in_child=_DEADLINES.reset)


class CommandRunner:
    """Runs argument lists (never a shell) with a timeout that kills the child's whole process group."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env) if env is not None else None

    def _environ(self) -> dict[str, str] | None:
        if self.env is None:
            return None
        merged = dict(os.environ)
        merged.update(self.env)
        return merged

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float = 30.0,
        cwd: str | None = None,
        failure_expected: bool = False,
    ) -> CommandResult:
        """`failure_expected`: a non-zero exit is an answer the caller parses (squeue's "Invalid job id" when
        every id left the queue): its stderr is logged at DEBUG instead of ERROR."""
        argv = tuple(str(a) for a in argv)
        result = self._execute(argv, stdin=stdin, timeout=timeout, cwd=cwd)
        if result.timed_out:
            log.error("command %s timed out after %.1f s (killed its process group)", argv[0], timeout)
        elif result.returncode != 0:
            log.debug("command %s exited %d in %.3f s", " ".join(argv[:3]), result.returncode, result.duration)
            log.log(
                logging.DEBUG if failure_expected else logging.ERROR,
                "command %s failed (exit %d): %s",
                argv[0],
                result.returncode,
                result.stderr.strip()[:2000],
            )
        else:
            log.debug("command %s exited 0 in %.3f s", " ".join(argv[:3]), result.duration)
        metrics.observe_batch_command(
            os.path.basename(argv[0]), result.duration, result.ok or (failure_expected and not result.timed_out)
        )
        return result

    def _execute(self, argv: tuple[str, ...], *, stdin: str | None, timeout: float, cwd: str | None) -> CommandResult:
        start = time.monotonic()
        try:
            # a new session: on timeout the whole tree (srun, ssh, ...) goes, not just the direct child
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=cwd,
                env=self._environ(),
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandNotFound(
                f"cannot run {argv[0]!r}: executable not found; install it or put it on PATH "
                f"(PATH={(self.env or os.environ).get('PATH', '')})"
            ) from exc
        # The timeout kills the process group from one shared thread, and communicate() waits without one: with a
        # timeout, Popen.wait polls the exit with sleeps of 1, 2, 4 ... ms after the pipes close, a few ms per
        # command for nothing (sbatch submissions: issue 15).
        seq, expired = _DEADLINES.watch(proc.pid, timeout)
        try:
            out, err = proc.communicate(stdin)
        finally:
            _DEADLINES.done(seq)
        timed_out = expired.is_set()
        code = -9 if timed_out else proc.returncode
        return CommandResult(
            argv=argv,
            stdin=stdin,
            stdout=out or "",
            stderr=err or "",
            returncode=code,
            duration=time.monotonic() - start,
            timed_out=timed_out,
        )


class RecordedRunner(CommandRunner):
    """Serves recorded results back, in order, checking that each call asks for the recorded command.

    `results` holds CommandResult objects or mappings with their fields (JSON from a trace). A recorded argv may
    end with "..." to match any remaining arguments (ids, file paths that differ per run). Calls made are kept in
    `calls` so tests can check what a plugin asked for.
    """

    def __init__(self, results: Iterable[CommandResult | Mapping]) -> None:
        super().__init__()
        self._queue = [r if isinstance(r, CommandResult) else CommandResult.from_dict(r) for r in results]
        self.calls: list[tuple[tuple[str, ...], str | None]] = []

    @property
    def remaining(self) -> int:
        return len(self._queue)

    def _execute(self, argv: tuple[str, ...], *, stdin: str | None, timeout: float, cwd: str | None) -> CommandResult:
        self.calls.append((argv, stdin))
        if not self._queue:
            raise ReplayMismatch(f"replay has no recorded result left for {' '.join(argv)!r}")
        recorded = self._queue.pop(0)
        if not _argv_matches(recorded.argv, argv):
            raise ReplayMismatch(f"replay expected {' '.join(recorded.argv)!r} but the code ran {' '.join(argv)!r}")
        if recorded.returncode == 127 and recorded.stderr.startswith("not found"):
            raise CommandNotFound(f"cannot run {argv[0]!r}: executable not found (recorded)")
        return CommandResult(
            argv=argv,
            stdin=stdin,
            stdout=recorded.stdout,
            stderr=recorded.stderr,
            returncode=recorded.returncode,
            duration=recorded.duration,
            timed_out=recorded.timed_out,
        )


def _argv_matches(recorded: Sequence[str], actual: Sequence[str]) -> bool:
    if recorded and recorded[-1] == "...":
        head = list(recorded[:-1])
        return list(actual[: len(head)]) == head
    return list(recorded) == list(actual)
