"""Run one event range's payload in a supervised child process, so the rank survives whatever the payload does.

A payload that writes nothing (its log and its output stay the same size) and uses no CPU (the child and its
descendants) for ``looping_timeout`` seconds is looping: it is killed and its range reported failed with
CODE_LOOPING, so the central service hands the range out again while attempts remain.

Isolation per payload spec: ``worker`` keeps one long-lived ``python -m jumbo.child`` per rank and callable (cheap,
restarted if it dies); ``process`` starts a fresh child per range; commands always get a fresh process. A range that
is still running at the deadline is killed (SIGKILL) and reported not-done, so it is handed out again.
``inline`` calls the function in the rank itself: the cheapest, for short trusted callables only — an exception is
still a failed range, but a crash takes the rank (and with MPI the whole pilot) down, and the deadline cannot stop it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import select
import shlex
import signal
import subprocess
import sys
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import psutil

from jumbo import paylog
from jumbo.payloads import resolve

log = logging.getLogger(__name__)

CODE_EXCEPTION = 1  # a callable raised without an error code
CODE_NO_OUTPUT = 70  # the payload said OK but the output file is missing
CODE_START_FAILED = 71  # the child process or command could not be started
CODE_LOOPING = 1150  # pilot3's LOOPINGJOB: no output and no CPU progress for looping_timeout, killed
CODE_SIGNAL_BASE = 128  # killed by signal N -> 128 + N (as a shell reports it)
STOP_GRACE = 5.0  # seconds a worker child gets to exit after its stdin closes
SYNC_THREADS = 4  # outputs fsynced at once by sync_outputs


@dataclass
class Outcome:
    """What became of one payload execution."""

    status: str  # finished | failed | not-done
    code: int = 0
    message: str = ""
    cpu: float = 0.0
    fsize: int = 0
    adler32: str = ""
    start: float | None = None  # when the child started / ended it (pipelined ranges start before the rank looks)
    end: float | None = None


class PayloadChild(Protocol):
    """A worker child: a subprocess.Popen (stdin and stdout pipes), or jumbo.zygote's ForkedChild."""

    @property
    def stdin(self) -> IO[bytes] | None: ...
    @property
    def stdout(self) -> IO[bytes] | None: ...
    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


def _pipe(stream: IO[bytes] | None) -> IO[bytes]:
    """A worker child's stdin or stdout: always a pipe (both kinds of child are made with them)."""
    if stream is None:
        raise RuntimeError("payload child without a pipe")
    return stream


@dataclass
class Ticket:
    """A range on its way through a worker child."""

    payload: dict
    first: int
    last: int
    output: str
    context: dict
    child: PayloadChild | None = None  # the child that holds it; None: not handed out (or handed back)
    failed: Outcome | None = field(default=None)  # no child could be started for it
    submitted: float = 0.0


def adler32_of(path: str | Path, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, adler32 as 8 hex digits) of a file, as PanDA records it."""
    value, size = 1, 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            value = zlib.adler32(block, value)
            size += len(block)
    return size, f"{value & 0xFFFFFFFF:08x}"


def _fsync(path: str) -> OSError | None:
    """fsync one file; the error instead of raising it."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    return None


def child_env(base: dict | None = None) -> dict:
    """The payload's environment: the rank's, without MPI's wiring (a payload is not a rank), one thread per lib."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith(("OMPI_", "PMIX_", "PMI_"))}
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(key, "1")
    return env


def render_command(template: list[str] | str, **values) -> list[str]:
    """Fill {first_event} {last_event} {output} {rank} {seed} into a command template (a list, or a str split
    shell-like)."""
    parts = shlex.split(template) if isinstance(template, str) else list(template)
    return [part.format(**values) for part in parts]


def _signal_outcome(returncode: int, what: str) -> Outcome:
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return Outcome("failed", CODE_SIGNAL_BASE + sig, f"{what} killed by {name}")
    return Outcome("failed", returncode or CODE_EXCEPTION, f"{what} exited with code {returncode}")


LOOPING = b"looping"  # _read_answer's word for a payload that made no progress for the looping timeout


class Progress:
    """Whether a payload child is doing anything: the CPU time of it and its descendants, the size of the rank's
    payload log and of the range's output. `stalled()` is true once none of them moved for the looping timeout."""

    def __init__(self, runner: PayloadRunner, child: PayloadChild, output: str) -> None:
        self.timeout = runner.looping_timeout
        self.log, self.output = runner._log, output
        self.jsonl = runner.payload_log.path if runner.payload_log is not None else None
        self.pid = getattr(child, "pid", None)
        self.check = None if not self.timeout else max(0.05, min(self.timeout / 4, 30.0))
        self.last: tuple = ()
        self.since = time.monotonic()

    def wait(self) -> float | None:
        """Seconds to wait before the next look (None: no looping check)."""
        return self.check

    def _sample(self) -> tuple:
        cpu = 0.0
        try:
            proc = psutil.Process(self.pid)
            for p in (proc, *proc.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    cpu += times.user + times.system
        except psutil.Error:
            pass
        sizes = []
        for fd_or_path in (self.log.fileno() if self.log else None, self.output, self.jsonl):
            try:
                sizes.append(os.stat(fd_or_path).st_size if fd_or_path is not None else 0)
            except OSError:
                sizes.append(-1)
        return (round(cpu, 2), *sizes)

    def stalled(self) -> bool:
        if not self.timeout or self.pid is None:
            return False
        now, sample = time.monotonic(), self._sample()
        if sample != self.last:
            self.last, self.since = sample, now
            return False
        return now - self.since >= self.timeout


class PayloadRunner:
    """One per rank: runs ranges one at a time; ``close()`` stops the worker children."""

    def __init__(
        self,
        rank: int,
        log_path: Path | None = None,
        fsync_outputs: bool = True,
        spare: PayloadChild | None = None,
        looping_timeout: float | None = None,
        payload_log: paylog.Settings | None = None,
    ):
        self.rank = rank
        self.payload_log = payload_log  # stdout/stderr as tagged JSON lines (jumbo.paylog); None: into log_path
        self._jsonl: paylog.LogFile | None = None  # the rank's own writer (command payloads)
        self.looping_timeout = looping_timeout
        self._spare = spare  # a child forked before MPI started (jumbo.zygote), used by the first worker payload
        self.fsync_outputs = fsync_outputs
        self._log = open(log_path, "ab") if log_path else None
        self._children: dict[str, PayloadChild] = {}
        self._inline: dict = {}
        self.restarts = 0
        self._syncers: ThreadPoolExecutor | None = None  # sync_outputs' threads, made at its first batch

    # -- public
    def run(
        self,
        payload: dict,
        first: int,
        last: int,
        output: str,
        context: dict,
        deadline: float | None,
        sync: bool = True,
    ) -> Outcome:
        """Run one range; ``deadline`` is a time.time() after which it is killed and reported not-done. ``sync``
        False: its output is not fsynced here (see :meth:`collect`)."""
        if "command" in payload:
            outcome = self._run_command(payload, first, last, output, context, deadline)
        else:
            outcome = self._run_callable(payload, first, last, output, context, deadline)
        if outcome.status != "finished" or payload.get("output", True) is False:
            return outcome
        return self._verify_output(output, outcome, sync)

    def prestart(self, payload: dict) -> None:
        """Start the worker child of a callable payload ahead of its first range (no-op otherwise)."""
        name = payload.get("callable")
        if name and payload.get("isolation", "worker") == "worker" and name not in self._children:
            try:
                self._children[name] = self._spawn_child()
            except OSError as exc:
                log.warning(
                    "rank %d: cannot prestart the payload child for %s (%s); trying at the first range",
                    self.rank,
                    name,
                    exc,
                )

    def close(self) -> None:
        for child in self._children.values():
            self._stop(child)
        self._children.clear()
        if self._spare is not None:
            self._stop(self._spare)
            self._spare = None
        if self._log:
            self._log.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._syncers is not None:
            self._syncers.shutdown()
            self._syncers = None

    # -- internals
    def sync_outputs(self, paths: list[str]) -> dict[str, OSError]:
        """fsync these outputs (if this runner fsyncs), several at once: concurrent fsyncs share one journal commit
        (measured on ext4: ~0.8 ms per file in threes instead of ~2.5 ms one by one). The errors by path."""
        if not self.fsync_outputs or not paths:
            return {}
        if len(paths) == 1:
            return {p: e for p, e in ((paths[0], _fsync(paths[0])),) if e is not None}
        if self._syncers is None:
            self._syncers = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="fsync")
        return {p: e for p, e in zip(paths, self._syncers.map(_fsync, paths), strict=True) if e is not None}

    def _verify_output(self, output: str, outcome: Outcome, sync: bool = True) -> Outcome:
        try:
            if self.fsync_outputs and sync:
                fd = os.open(output, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            outcome.fsize, outcome.adler32 = adler32_of(output)
        except OSError as exc:
            return Outcome(
                "failed",
                CODE_NO_OUTPUT,
                f"payload reported success but its output {output} is unreadable ({exc})",
                outcome.cpu,
            )
        return outcome

    def _spawn_child(self) -> PayloadChild:
        if self._spare is not None:
            spare, self._spare = self._spare, None
            if spare.poll() is None:
                return spare
        return subprocess.Popen(
            [sys.executable, "-m", "jumbo.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log or None,
            env=child_env(),
            start_new_session=True,
        )

    def _stop(self, child: PayloadChild) -> None:
        try:
            _pipe(child.stdin).close()
            child.wait(timeout=STOP_GRACE)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
        if child.stdout:
            child.stdout.close()

    def _run_inline(self, name, first, last, output, context) -> Outcome:
        fn = self._inline.get(name)
        c0 = time.process_time()
        try:
            if fn is None:
                fn = self._inline[name] = resolve(name)
            fn(first, last, output, context)
        except Exception as exc:
            code = getattr(exc, "code", None)
            code = code if isinstance(code, int) and code != 0 else CODE_EXCEPTION
            return Outcome("failed", code, f"{type(exc).__name__}: {exc}"[:500], time.process_time() - c0)
        return Outcome("finished", 0, "", time.process_time() - c0)

    def _run_callable(self, payload, first, last, output, context, deadline) -> Outcome:
        name = payload["callable"]
        if payload.get("isolation") == "inline":
            return self._run_inline(name, first, last, output, context)
        ticket = Ticket(payload, first, last, output, context)
        outcome = self._hand(ticket) or self._await(ticket, deadline)
        if payload.get("isolation", "worker") == "process" and name in self._children:
            self._stop(self._children.pop(name))
        return outcome

    def _hand(self, ticket: Ticket) -> Outcome | None:
        """Write the range to its worker child (started if needed); an Outcome only if no child can start."""
        name = ticket.payload["callable"]
        child = self._children.get(name)
        # No liveness check here (a waitpid per range cost ~60 µs): a child that died is dropped when its EOF is
        # read, and a range written to a dead child gets that EOF and is reported failed.
        if child is None:
            try:
                child = self._children[name] = self._spawn_child()
            except OSError as exc:
                return Outcome("failed", CODE_START_FAILED, f"cannot start the payload child for {name}: {exc}")
        request = {
            "callable": name,
            "first": ticket.first,
            "last": ticket.last,
            "output": ticket.output,
            "context": ticket.context,
        }
        if self.payload_log is not None and not getattr(child, "jumbo_log", False):
            request["log"] = self.payload_log.as_dict()  # once per child: it pumps its output from now on
            child.jumbo_log = True  # type: ignore[attr-defined]
        ticket.child = child
        self._tickets(child).append(ticket)
        try:
            stdin = _pipe(child.stdin)
            stdin.write(json.dumps(request).encode() + b"\n")
            stdin.flush()
        except OSError:
            pass  # the child died before reading: its exit status says why, when the answer is awaited
        return None

    @staticmethod
    def _tickets(child) -> deque:
        """The tickets a child holds, in the order it answers them."""
        if not hasattr(child, "jumbo_tickets"):
            child.jumbo_tickets = deque()
        return child.jumbo_tickets

    def _drop_child(self, name: str, child) -> None:
        """Forget a dead or killed child; ranges queued behind the current one go back to 'not handed out'."""
        tickets = self._tickets(child)
        while tickets:
            tickets.popleft().child = None
        if self._children.get(name) is child:
            del self._children[name]

    def _await(self, ticket: Ticket, deadline: float | None) -> Outcome:
        name, child = ticket.payload["callable"], ticket.child
        if child is None:  # _hand gave it to a child or returned an Outcome instead of awaiting
            raise RuntimeError(f"range {ticket.first}-{ticket.last} awaited without a payload child")
        tickets = self._tickets(child)
        if not tickets or tickets[0] is not ticket:  # answers come in order: anything else is a bug here
            log.error(
                "rank %d: range %d-%d is not next in its payload child's queue; restarting the child",
                self.rank,
                ticket.first,
                ticket.last,
            )
            child.kill()
            child.wait()
            self._drop_child(name, child)
            return Outcome("failed", CODE_START_FAILED, "internal: payload child queue out of order")
        line = self._read_answer(child, deadline, Progress(self, child, ticket.output))
        if line is None or line is LOOPING:  # deadline passed, or the payload loops
            child.kill()
            child.wait()
            self._drop_child(name, child)
            if line is LOOPING:
                return self._looping(f"payload {name}", ticket.first, ticket.last)
            return Outcome("not-done", 0, "payload stopped at the walltime deadline")
        if not line:  # EOF: the child died (SIGKILL, segfault, os._exit)
            code = child.wait()
            self._drop_child(name, child)
            self.restarts += 1
            log.warning(
                "rank %d: payload child for %s died (%s) on events %d-%d; a new one starts next range",
                self.rank,
                name,
                code,
                ticket.first,
                ticket.last,
            )
            return _signal_outcome(code, f"payload {name}")
        self._tickets(child).popleft()
        ticket.child = None
        answer = json.loads(line)
        status = "finished" if answer["ok"] else "failed"
        return Outcome(
            status,
            int(answer["code"]),
            answer["message"],
            float(answer["cpu"]),
            start=answer.get("start"),
            end=answer.get("end"),
        )

    # -- pipelining: the next range waits in the child's input while the current one runs
    @staticmethod
    def pipelines(payload: dict) -> bool:
        return "callable" in payload and payload.get("isolation", "worker") == "worker"

    def submit(self, payload: dict, first: int, last: int, output: str, context: dict) -> Ticket:
        """Hand a range to the worker child now (if the payload pipelines); :meth:`collect` returns its outcome."""
        ticket = Ticket(payload, first, last, output, context)
        if self.pipelines(payload):
            ticket.failed = self._hand(ticket)
        return ticket

    def hand(self, ticket: Ticket) -> None:
        """Put a pipelined range back into a child if its child died (call before handing any later range)."""
        if self.pipelines(ticket.payload) and ticket.child is None and ticket.failed is None:
            ticket.failed = self._hand(ticket)

    def collect(self, ticket: Ticket, deadline: float | None, sync: bool = True) -> Outcome:
        """The outcome of a submitted range (runs it now if it was not handed out, or was handed back). With
        ``sync`` False the range's output is not fsynced here: the caller does it (:meth:`sync_outputs`)
        before it reports the range."""
        if not self.pipelines(ticket.payload):
            return self.run(ticket.payload, ticket.first, ticket.last, ticket.output, ticket.context, deadline, sync)
        outcome = ticket.failed
        if outcome is None and ticket.child is None:
            outcome = self._hand(ticket)
        if outcome is None:
            outcome = self._await(ticket, deadline)
        if outcome.status != "finished" or ticket.payload.get("output", True) is False:
            return outcome
        return self._verify_output(ticket.output, outcome, sync)

    @staticmethod
    def started(ticket: Ticket) -> bool:
        """True if the range sits in a live child's hands (it runs, or runs next)."""
        return ticket.child is not None

    def _looping(self, what: str, first: int, last: int) -> Outcome:
        why = f"{what} looping: no output and no CPU progress for {self.looping_timeout:.0f} s; killed"
        log.error("rank %d: events %d-%d: %s", self.rank, first, last, why)
        return Outcome("failed", CODE_LOOPING, why)

    def _read_answer(
        self, child: PayloadChild, deadline: float | None, progress: Progress | None = None
    ) -> bytes | None:
        """One answer line; b'' on EOF; None if the deadline passed first; LOOPING if `progress` saw none for the
        looping timeout.

        Reads the pipe with os.read into a per-child buffer: a buffered readline() after select() would pull a
        second, pipelined answer into Python's buffer where select() no longer sees it, and that range would
        wait for the walltime.
        """
        buffer: bytearray = child.__dict__.setdefault("jumbo_answers", bytearray())
        fd = _pipe(child.stdout).fileno()
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                return line
            wait = None if progress is None else progress.wait()
            if deadline is not None:
                left = deadline - time.time()
                if left <= 0:
                    return None
                wait = left if wait is None else min(wait, left)
            if wait is not None:
                ready, _, _ = select.select([fd], [], [], wait)
                if not ready:
                    if progress is not None and progress.stalled():
                        return LOOPING
                    continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""  # EOF; a partial last line of a dying child is no answer
            buffer += chunk

    def _run_command(self, payload, first, last, output, context, deadline) -> Outcome:
        argv = render_command(
            payload["command"], first_event=first, last_event=last, output=output, rank=self.rank, seed=context["seed"]
        )
        pump = None
        out: Any = self._log or None
        err: Any = out
        if self.payload_log is not None:
            if self._jsonl is None:
                self._jsonl = paylog.LogFile(self.payload_log, self.rank)
            streams, (out, err) = paylog.pipes()
            pump = paylog.Pump(self._jsonl, streams, paylog.tags_of(context, self.rank, self.payload_log.worker))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=child_env(),
                    start_new_session=True,
                )
            finally:
                if pump is not None:  # the command holds the write ends now (or never started)
                    os.close(out)
                    os.close(err)
                    pump.start()
        except OSError as exc:
            return Outcome("failed", CODE_START_FAILED, f"cannot start payload command {argv[0]!r}: {exc}")
        try:
            return self._wait_command(proc, argv, first, last, output, deadline, before)
        finally:
            if pump is not None:
                pump.join(timeout=1.0)

    def _wait_command(self, proc, argv, first, last, output, deadline, before) -> Outcome:
        progress = Progress(self, proc, output)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.time())
            wait = progress.wait()
            try:
                proc.wait(timeout=left if wait is None else wait if left is None else min(left, wait))
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.time() >= deadline:
                    proc.kill()
                    proc.wait()
                    return Outcome("not-done", 0, "payload stopped at the walltime deadline")
                if progress.stalled():
                    os.killpg(proc.pid, signal.SIGKILL)  # the command and whatever it started
                    proc.wait()
                    return self._looping(f"payload command {argv[0]!r}", first, last)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            outcome = _signal_outcome(proc.returncode, f"payload command {argv[0]!r}")
            outcome.cpu = cpu
            return outcome
        return Outcome("finished", 0, "", cpu)
