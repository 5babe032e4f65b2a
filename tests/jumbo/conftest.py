"""Fixtures for the jumbo tests: a real harvester side (jumbo.protocol's harvester functions on a thread) and a
real `mpirun` launcher. MPI tests fail loudly when mpirun/mpi4py are missing and CI is set; they skip otherwise."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from jumbo import payloads, protocol

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
SIM_ARGS = {"size": 2000, "rounds": 5}


def require(ok: bool, what: str) -> None:
    if ok:
        return
    if CI:
        pytest.fail(f"{what} is missing and CI is set: install it (see scripts/ and the README), do not skip")
    pytest.skip(f"{what} is missing (set CI=true to make this a failure)")


def make_ranges(task_id: int, panda_id: int, n: int, per_range: int = 10, start: int = 0) -> list[dict]:
    return [
        {
            "eventRangeID": f"{task_id}-{panda_id}-1-{i}-1",
            "startEvent": start + i * per_range,
            "lastEvent": start + (i + 1) * per_range - 1,
            "LFN": "EVNT.pool.root",
            "GUID": "g",
            "scope": "mc",
        }
        for i in range(n)
    ]


def write_spec(ap: Path, jobs: list[dict], **pilot) -> Path:
    settings = {
        "poll_interval": 0.05,
        "heartbeat_interval": 0.5,
        "monitor_interval": 0.5,
        "status_flush_interval": 0.2,
        "safety_margin": 0.0,
    }
    settings.update(pilot)
    return protocol.write_job_spec(ap, {"jobs": jobs, "pilot": settings})


def sim_job(panda_id: int = 1001, task_id: int = 77, **payload) -> dict:
    spec = {"callable": "jumbo.payloads:simulate", "args": dict(SIM_ARGS), "suffix": ".npy"}
    spec.update(payload)
    return {"PandaID": panda_id, "taskID": task_id, "jobsetID": 5, "payload": spec}


class Harvester:
    """Answers the pilot's event requests from a list of ranges and collects its status reports, on a thread.

    Ranges reported not-done go back to the list (handed out again to the next pilot). ``malformed_answers``:
    how many requests get a broken JobsEventRanges file first (the ranges stay in the list).
    """

    def __init__(self, ap: Path, ranges: dict[int, list[dict]], malformed_answers: int = 0):
        self.ap = Path(ap)
        self.remaining = {pid: list(lst) for pid, lst in ranges.items()}
        self.statuses: list[dict] = []
        self.malformed_answers = malformed_answers
        self.requests = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="test-harvester", daemon=True)
        self.errors: list[BaseException] = []

    def cycle(self) -> None:
        with self._lock:
            for req in protocol.read_event_requests(self.ap):
                self.requests += 1
                if self.malformed_answers > 0:
                    self.malformed_answers -= 1
                    bad = protocol.stream_path(self.ap, protocol.RANGES, req.seq)
                    bad.write_text('{"protocol": 1, "seq": %d, "ranges": {"1001": [{"eventRangeID": 5}]}}' % req.seq)
                    protocol.mark_consumed(self.ap, req)
                    continue
                answer, no_more = {}, set()
                for pid, want in req.requests.items():
                    lst = self.remaining.get(pid, [])
                    answer[pid], self.remaining[pid] = lst[: want["nRanges"]], lst[want["nRanges"] :]
                    if not self.remaining[pid]:
                        no_more.add(pid)
                protocol.write_event_ranges(self.ap, req.seq, answer, no_more)
                protocol.mark_consumed(self.ap, req)
            for batch in protocol.read_event_status(self.ap):
                for pid, events in batch.events.items():
                    for ev in events:
                        self.statuses.append({**ev, "PandaID": pid})
                        if ev["eventStatus"] == "not-done":
                            self.remaining.setdefault(pid, []).append(
                                {k: ev[k] for k in ("eventRangeID", "startEvent", "lastEvent")}
                            )
                protocol.mark_consumed(self.ap, batch)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.cycle()
            except BaseException as exc:
                self.errors.append(exc)
                return

    def __enter__(self) -> Harvester:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.cycle()
        if self.errors:
            raise self.errors[0]

    def by_status(self, status: str) -> list[dict]:
        return [s for s in self.statuses if s["eventStatus"] == status]


def check_finished(entries: list[dict], task_id: int, args: dict = SIM_ARGS) -> None:
    """Each finished range: output on disk with the reported size and adler32, and recomputed content."""
    assert entries, "no finished range to check"
    for ev in entries:
        data = Path(ev["path"]).read_bytes()
        assert len(data) == ev["fsize"], ev
        assert f"{zlib.adler32(data) & 0xFFFFFFFF:08x}" == ev["adler32"], ev
        assert payloads.verify(ev["path"], task_id, ev["startEvent"], ev["lastEvent"], args), ev


class PilotRun:
    """`mpirun --oversubscribe -np N python -m jumbo --ap AP` with the root variables; logs in the tmp dir."""

    def __init__(self, ap: Path, ranks: int, args: tuple = (), env: dict | None = None):
        self.ap, self.ranks = Path(ap), ranks
        self.log = self.ap.parent / f"mpirun.{self.ap.name}.log"
        argv = ["mpirun", "--oversubscribe", "-np", str(ranks), sys.executable, "-m", "jumbo", "--ap", str(ap), *args]
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ROOT_ENV, **(env or {})},
            cwd=self.ap.parent,
        )

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"pilot did not end within {timeout} s; log: {self.log.read_text()[-3000:]}")
        finally:
            self._fh.close()

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def mpi() -> None:
    require(shutil.which("mpirun") is not None, "mpirun (apt-get install openmpi-bin)")
    require(importlib.util.find_spec("mpi4py") is not None, "mpi4py (pip install mpi4py)")


@pytest.fixture
def ap(tmp_path: Path) -> Path:
    path = tmp_path / "ap"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def h():
    """The helpers above (Harvester, PilotRun, make_ranges, write_spec, sim_job, check_finished): with
    --import-mode=importlib a test module cannot import conftest by name."""
    return sys.modules[__name__]


@pytest.fixture
def central(tmp_path):
    """The embedded central service on a loopback port, trusted mode (pilots in http mode talk to it)."""
    from harvester_edge.central.server import EmbeddedCentral
    from harvester_edge.central.settings import CentralSettings

    server = EmbeddedCentral(CentralSettings(db=tmp_path / "central.db", host="127.0.0.1", port=0, trusted=True))
    server.start()
    yield server
    server.stop()
