"""A synthetic site at virtual time: a batch system (Slurm or LSF command outputs in their documented formats), a
central service (the v1 envelope, in memory) and pilots (in memory, behind the pilot-file seam).

The real agents and plugins run against it unchanged: the batch side is a CommandRunner (so the plugins parse real
output formats), the central side an HTTP transport, the pilots a pilot-file seam backend. Behaviour is seeded and
configurable: queue wait, failure rate at start, walltime kills (a pilot that hangs until the batch system kills
it). Used by `harvester-edge simulate` and to build the LSF trace of the tests.
"""

from __future__ import annotations

import json
import json as jsonlib  # `json` is a parameter of the transport's request (HttpTransport's signature)
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harvester_edge.codes import StatusCode
from harvester_edge.seams.commands import CommandResult, CommandRunner
from harvester_edge.seams.files import DirectFiles
from harvester_edge.seams.http import HttpResult
from jumbo import protocol


@dataclass
class Behaviour:
    queue_wait: float = 60.0  # mean seconds a job pends (uniform 0.5x..1.5x)
    fail_rate: float = 0.0  # share of jobs that fail at start (exit 1, the pilot never runs)
    kill_rate: float = 0.0  # share of pilots that hang and are killed at the walltime (TIMEOUT)
    seconds_per_event: float = 1.0
    events_per_range: int = 10
    ranges: int = 1000  # event ranges of the one task
    jobs: int = 4  # jumbo jobs sharing the task's ranges
    seed: int = 1
    # steady work: 0 = every job (and all `ranges`) there at the start; > 0 = a job arrives every `job_every`
    # virtual seconds (the first at once), bringing `ranges` new ranges of its own into the task's pool
    job_every: float = 0.0


@dataclass
class SimJob:
    batch_id: str
    name: str
    ap: str
    ranks: int
    walltime: float
    submitted: float
    start: float
    fails: bool
    hangs: bool
    state: str = "PENDING"
    end: float | None = None
    exit_code: int | None = None
    cancelled: bool = False


@dataclass
class Pilot:
    job: SimJob
    panda_id: int = 0
    task_id: int = 0
    held: list = field(default_factory=list)
    no_more: bool = False
    requests: dict = field(default_factory=dict)  # seq -> Request (unconsumed files)
    statuses: dict = field(default_factory=dict)  # seq -> Batch
    next_seq: int = 1
    next_status: int = 1
    waiting: bool = False
    credit: float = 0.0
    last: float = 0.0
    beat: float | None = None
    done: bool = False
    answered: set = field(default_factory=set)  # sequences of ranges files written (each written once)


class Clocked:
    """Time spent in the synthetic world (not in the harvester), so benchmarks can subtract it."""

    def __init__(self) -> None:
        self.overhead = 0.0

    def timed(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.overhead += time.process_time() - start


class SyntheticCentral:
    """The central service's answers for what the agents call: jobs, ranges (task-wide), reports."""

    def __init__(self, behaviour: Behaviour, meter: Clocked, clock: Callable[[], float] | None = None) -> None:
        self.b = behaviour
        self.meter = meter
        self.clock = clock or (lambda: 0.0)
        self.first_arrival: float | None = None
        self.task_id = 77
        self.next_job = 0
        self.ready = [] if behaviour.job_every > 0 else list(range(behaviour.ranges))
        self.ready.reverse()  # pop() from the end hands out the lowest range first
        self.finished: set[int] = set()
        self.attempts: dict[int, int] = {}
        self.calls = 0
        # exactly-once bookkeeping of the outside world (the chaos accounting reads it)
        self.owed = behaviour.jobs  # jobs still to hand out: the task's jobs, plus a replacement per job end below
        self.held: dict[int, set[int]] = {}  # PandaID -> range indexes in flight (handed out, no final report yet)
        self.finished_by: dict[int, str] = {}  # range index -> the eventRangeID whose report finished it
        self.ended: set[int] = set()
        self.redelivered = 0  # a finished report again, same eventRangeID (a re-sent message: harmless)
        self.double_finished = 0  # a finished report for a range already finished by another attempt
        self.stale = 0  # reports of an attempt that no longer holds its range (ignored, as the real service does)
        self.released = 0  # in-flight ranges of ended jobs, made ready again

    @property
    def total_ranges(self) -> int:
        """Ranges the whole run hands out (steady work: each job brings its own)."""
        return self.b.ranges * self.b.jobs if self.b.job_every > 0 else self.b.ranges

    def _arrived(self) -> bool:
        """Whether the next job is there (steady work: one every job_every seconds); its ranges join the pool."""
        if self.b.job_every <= 0:
            return True
        now = self.clock()
        if self.first_arrival is None:
            self.first_arrival = now
        if now < self.first_arrival + self.next_job * self.b.job_every:
            return False
        k = self.next_job
        self.ready[:0] = range((k + 1) * self.b.ranges - 1, k * self.b.ranges - 1, -1)  # handed out after retries
        return True

    def range_spec(self, index: int, panda_id: int) -> dict:
        first = index * self.b.events_per_range + 1
        # a range handed out again gets a new id (its attempt), as the real service does
        return {
            "eventRangeID": f"{self.task_id}-{panda_id}-{index}-{self.attempts.get(index, 0)}",
            "startEvent": first,
            "lastEvent": first + self.b.events_per_range - 1,
            "LFN": "EVNT.01.root",
            "GUID": "g-1",
            "scope": "sim",
        }

    def handle(self, method: str, path: str, params: Any, body: Any) -> Any:
        self.calls += 1
        name = path.split("/api/v1/", 1)[-1]
        if name == "pilot/acquire_jobs":
            out = []
            for _ in range(int(body.get("n_jobs", 1))):
                # the task's jobs arrive on schedule (steady work: _arrived); a replacement for an ended one at once
                if self.owed <= 0 or (self.next_job < self.b.jobs and not self._arrived()):
                    break
                self.owed -= 1
                self.next_job += 1
                pid = 1000 + self.next_job
                events = self.b.ranges * self.b.events_per_range
                if self.next_job > self.b.jobs:  # a replacement: the events still open
                    events = (len(self.ready) + sum(len(h) for h in self.held.values())) * self.b.events_per_range
                out.append(
                    {
                        "PandaID": pid,
                        "taskID": self.task_id,
                        "jobsetID": self.task_id,
                        "nEvents": events,
                        "nEventsRemaining": events,
                        "secondsPerEvent": self.b.seconds_per_event,
                        "eventsPerRange": self.b.events_per_range,
                        "payload": {"kind": "python", "callable": "jumbo.payloads:sleep", "args": {}},
                    }
                )
            return {"jobs": out}
        if name == "event/acquire_event_ranges":
            n, pid = int(body.get("n_ranges", 1)), int(body["job_id"])
            got = [self.ready.pop() for _ in range(min(n, len(self.ready)))]
            self.held.setdefault(pid, set()).update(got)
            return [self.range_spec(i, pid) for i in got]
        if name == "event/update_event_ranges":
            reports = json.loads(body["event_ranges"])
            return {"Returns": [True] * len(reports), "Results": [self.report(r) for r in reports], "Command": None}
        if name == "pilot/update_jobs_bulk":
            for update in body.get("job_list", []):  # the real update_job's names (client.v1_job_update)
                if update.get("job_status") in ("finished", "failed", "cancelled"):
                    self.end_job(int(update["job_id"]))
            return [
                {"success": True, "message": "", "data": {"StatusCode": StatusCode.SUCCESS, "command": "NULL"}}
                for _ in body.get("job_list", [])
            ]  # one update_job envelope per job, as the real server
        if name == "event/get_available_event_range_count":
            return len(self.ready)
        raise KeyError(f"the synthetic central service does not answer {method} {path}")

    def report(self, rep: dict) -> str:
        """One range report, applied only by the attempt that holds the range (ids: task-PandaID-index-attempt)."""
        range_id = str(rep["eventRangeID"])
        _task, pid, index, attempt = (int(x) for x in range_id.split("-"))
        if index in self.finished:
            if rep["eventStatus"] == "finished":
                if self.finished_by[index] == range_id:
                    self.redelivered += 1
                else:
                    self.double_finished += 1
            return "duplicate"
        if attempt != self.attempts.get(index, 0):
            self.stale += 1
            return "stale"
        self.held.get(pid, set()).discard(index)
        if rep["eventStatus"] == "finished":
            self.finished.add(index)
            self.finished_by[index] = range_id
        else:
            self.attempts[index] = self.attempts.get(index, 0) + 1
            if self.attempts[index] < 5:
                self.ready.append(index)
        return "applied"

    def end_job(self, panda_id: int) -> None:
        """A job's final state: its ranges still in flight go back to ready under a new attempt, and a job replaces
        it if it left any (as the real service's end_job / settle_task: see harvester_edge.central.jobs)."""
        if panda_id in self.ended:
            return
        self.ended.add(panda_id)
        left = sorted(self.held.pop(panda_id, set()), reverse=True)
        for index in left:
            self.attempts[index] = self.attempts.get(index, 0) + 1
            self.ready.append(index)
        self.released += len(left)
        if left:
            self.owed += 1

    def given_up(self) -> int:
        """Ranges out of attempts (failed for good, by the behaviour's failures): not finished, not lost."""
        return sum(1 for i, n in self.attempts.items() if n >= 5 and i not in self.finished)


class SyntheticTransport:
    """The Transport seam over SyntheticCentral."""

    base_url = "http://synthetic.invalid"

    def __init__(self, central: SyntheticCentral) -> None:
        self.central = central

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: object = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> HttpResult:
        data_out = self.central.meter.timed(self.central.handle, method, path, params, json)
        result = HttpResult(
            200,
            {"content-type": "application/json"},
            jsonlib.dumps({"success": True, "data": data_out}).encode(),
            0.001,
        )
        return result

    def close(self) -> None:
        pass


def _bsub_option(pattern: str, script: str) -> re.Match[str]:
    """One #BSUB line of a batch script (the LSF plugin writes each one)."""
    found = re.search(pattern, script, re.M)
    if found is None:
        raise ValueError(f"the bsub script has no line matching {pattern!r}")
    return found


def _slurm_time(text: str) -> float:
    parts = [int(p) for p in re.split(r"[-:]", text)]
    if "-" in text:
        d, h, m, s = (parts + [0, 0])[:4]
        return d * 86400 + h * 3600 + m * 60 + s
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return h * 3600 + m * 60 + s


def _iso(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else "N/A"


def _lsf_time(t: float | None) -> str:
    return time.strftime("%b %d %H:%M:%S %Y", time.localtime(t)) if t else ""


class SyntheticBatch(CommandRunner):
    """sbatch/squeue/scancel and bsub/bjobs/bkill answered from an in-memory queue at the world's time."""

    SLURM_STATES = {
        "PENDING": "PENDING",
        "RUNNING": "RUNNING",
        "DONE": "COMPLETED",
        "EXIT": "FAILED",
        "TIMEOUT": "TIMEOUT",
        "CANCELLED": "CANCELLED",
    }
    LSF_STATES = {
        "PENDING": "PEND",
        "RUNNING": "RUN",
        "DONE": "DONE",
        "EXIT": "EXIT",
        "TIMEOUT": "EXIT",
        "CANCELLED": "EXIT",
    }

    def __init__(self, world: SyntheticWorld) -> None:
        super().__init__()
        self.world = world
        self.next_id = 4242
        self.asked: set[str] = set()  # batch ids the daemon named in a query or cancel (it tracks them)

    def _execute(self, argv, *, stdin, timeout, cwd) -> CommandResult:
        out, err, code = self.world.meter.timed(self._answer, list(argv), stdin)
        return CommandResult(tuple(argv), stdin, out, err, code, 0.01)

    def _answer(self, argv: list[str], stdin: str | None) -> tuple[str, str, int]:
        tool, jobs = argv[0], self.world.jobs
        if tool == "sbatch":
            text = Path(argv[-1]).read_text()
            opt = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", text, re.M))
            job = self.world.submit(
                str(self.next_id),
                opt["job-name"],
                opt["chdir"],
                int(opt["nodes"]) * int(opt["ntasks-per-node"]),
                _slurm_time(opt["time"]),
            )
            self.next_id += 1
            return f"{job.batch_id}\n", "", 0
        if tool == "bsub":
            script = stdin or ""
            name = _bsub_option(r"^#BSUB -J (\S+)", script).group(1)
            ranks = int(_bsub_option(r"^#BSUB -n (\d+)", script).group(1))
            wall = _bsub_option(r"^#BSUB -W (\d+):(\d+)", script)
            ap = _bsub_option(r"^#BSUB -cwd (\S+)", script).group(1)
            seconds = int(wall.group(1)) * 3600 + int(wall.group(2)) * 60
            job = self.world.submit(str(self.next_id), name, ap, ranks, seconds)
            self.next_id += 1
            return f"Job <{job.batch_id}> is submitted to queue <normal>.\n", "", 0
        if tool == "squeue":
            if "--name" in argv:
                names = set(argv[argv.index("--name") + 1].split(","))
                rows = [j for j in jobs.values() if j.name in names]
            else:
                ids = argv[argv.index("-j") + 1].split(",")
                self.asked.update(ids)
                rows = [jobs[i] for i in ids if i in jobs]
            if not rows and "-j" in argv:
                return "", "slurm_load_jobs error: Invalid job id specified\n", 1
            return (
                "".join(
                    f"{j.batch_id}|{self.SLURM_STATES[j.state]}|{'None' if j.state != 'PENDING' else 'Priority'}"
                    f"|{_iso(j.start if j.state != 'PENDING' else None)}|{_iso(j.end)}|{j.name}\n"
                    for j in rows
                ),
                "",
                0,
            )
        if tool == "sacct":
            return "", "", 0
        if tool in ("scancel", "bkill"):
            for i in argv[1:]:
                self.asked.add(i)
                self.world.cancel(i)
            return ("".join(f"Job <{i}> is being terminated\n" for i in argv[1:]) if tool == "bkill" else ""), "", 0
        if tool == "bjobs":
            ids = argv[argv.index("-json") + 1 :]
            self.asked.update(ids)
            records = []
            for i in ids or list(jobs):
                j = jobs.get(i)
                if j is None:
                    records.append({"JOBID": i, "ERROR": f"Job <{i}> is not found"})
                    continue
                records.append(
                    {
                        "JOBID": j.batch_id,
                        "STAT": self.LSF_STATES[j.state],
                        "EXIT_CODE": "" if j.exit_code in (None, 0) else str(j.exit_code),
                        "EXIT_REASON": {
                            "TIMEOUT": "TERM_RUNLIMIT: job killed after reaching LSF run time limit",
                            "CANCELLED": "TERM_OWNER: job killed by owner",
                        }.get(j.state, ""),
                        "PEND_REASON": "Job's resource requirements not satisfied" if j.state == "PENDING" else "",
                        "START_TIME": _lsf_time(j.start if j.state != "PENDING" else None),
                        "FINISH_TIME": _lsf_time(j.end),
                        "JOB_NAME": j.name,
                    }
                )
            return json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=1), "", 0
        return "", f"{tool}: command not found in the synthetic batch system\n", 127


REAL_FILE_OPS = frozenset({"write_job_spec", "write_script", "request_drain", "remove_access_point"})


class SyntheticWorld:
    """Jobs and pilots moved forward in virtual time by `advance(now)`; also the pilot-file seam backend."""

    def __init__(self, behaviour: Behaviour, margin: float = 30.0) -> None:
        self.b = behaviour
        self.rng = random.Random(behaviour.seed)
        self.meter = Clocked()
        self.central = SyntheticCentral(behaviour, self.meter, clock=lambda: self.now)
        self.jobs: dict[str, SimJob] = {}
        self.pilots: dict[str, Pilot] = {}  # access point -> pilot
        self.running: dict[str, SimJob] = {}  # not ended yet
        self.margin = margin
        self.now = 0.0
        self.disk = DirectFiles()  # the access points themselves are real (SyntheticBatch reads the scripts)

    # -- batch side -------------------------------------------------------------------------------------------
    def submit(self, batch_id: str, name: str, ap: str, ranks: int, walltime: float) -> SimJob:
        wait = self.b.queue_wait * (0.5 + self.rng.random())
        job = SimJob(
            batch_id,
            name,
            ap,
            ranks,
            walltime,
            self.now,
            self.now + wait,
            self.rng.random() < self.b.fail_rate,
            self.rng.random() < self.b.kill_rate,
        )
        self.jobs[batch_id] = job
        self.running[batch_id] = job
        return job

    def cancel(self, batch_id: str) -> None:
        job = self.jobs.get(batch_id)
        if job and job.end is None:
            self._end(job, "CANCELLED", 0)

    def _end(self, job: SimJob, state: str, code: int) -> None:
        job.state, job.end, job.exit_code = state, self.now, code
        self.running.pop(job.batch_id, None)
        pilot = self.pilots.get(job.ap)
        if pilot is not None:
            pilot.done = True

    def advance(self, now: float) -> None:
        self.meter.timed(self._advance, now)

    def _advance(self, now: float) -> None:
        self.now = now
        for job in list(self.running.values()):
            if job.state == "PENDING" and now >= job.start:
                if job.fails:
                    job.state = "RUNNING"
                    self._end(job, "EXIT", 1)
                    continue
                job.state = "RUNNING"
                self._start_pilot(job)
            if job.state == "RUNNING":
                if now >= job.start + job.walltime:
                    self._end(job, "TIMEOUT", 0)
                else:
                    self._run_pilot(self.pilots[job.ap], now)

    # -- pilots -----------------------------------------------------------------------------------------------
    def _start_pilot(self, job: SimJob) -> None:
        spec = json.loads((Path(job.ap) / protocol.JOB_SPEC).read_text())["jobs"][0]
        self.pilots[job.ap] = Pilot(job, int(spec["PandaID"]), int(spec["taskID"]), last=job.start, beat=job.start)

    def _run_pilot(self, p: Pilot, now: float) -> None:
        p.beat = now
        per_range = self.b.events_per_range * self.b.seconds_per_event
        p.credit += (now - p.last) * p.job.ranks / per_range
        p.last = now
        done = []
        while p.held and p.credit >= 1:
            p.credit -= 1
            done.append(p.held.pop(0))
        p.credit = min(p.credit, float(p.job.ranks))
        draining = now >= p.job.start + p.job.walltime - self.margin
        if draining and not p.job.hangs:
            self._report(p, done, [r for r in p.held])
            p.held = []
            self._end(p.job, "DONE", 0)
            return
        if done:
            self._report(p, done, [])
        if p.no_more and not p.held and not p.waiting and not p.job.hangs:
            self._end(p.job, "DONE", 0)
            return
        if len(p.held) < p.job.ranks and not p.waiting and not p.no_more:
            seq = p.next_seq
            p.next_seq += 1
            path = Path(p.job.ap) / f"{protocol.REQUESTS}.{seq}.json"
            p.requests[seq] = protocol.Request(
                seq,
                path,
                now,
                {
                    p.panda_id: {
                        "pandaID": p.panda_id,
                        "taskID": p.task_id,
                        "jobsetID": p.task_id,
                        "nRanges": 2 * p.job.ranks,
                    }
                },
            )
            p.waiting = True

    def _report(self, p: Pilot, done: list, not_done: list) -> None:
        if not done and not not_done:
            return
        seq = p.next_status
        p.next_status += 1
        cpu = self.b.events_per_range * self.b.seconds_per_event
        entries = [
            {
                "eventRangeID": r["eventRangeID"],
                "eventStatus": "finished",
                "nEvents": self.b.events_per_range,
                "cpuTime": cpu,
            }
            for r in done
        ]
        entries += [{"eventRangeID": r["eventRangeID"], "eventStatus": "not-done"} for r in not_done]
        path = Path(p.job.ap) / f"{protocol.STATUS}.{seq}.json"
        p.statuses[seq] = protocol.Batch(seq, path, self.now, {p.panda_id: entries})

    # -- the pilot-file seam ----------------------------------------------------------------------------------
    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if op in REAL_FILE_OPS:  # the daemon's own writes: on the real access points, the harvester's own cost
            return self.disk.call(op, *args, **kwargs)
        return self.meter.timed(getattr(self, "_" + op), *args, **kwargs)

    def _pending(self, ap, name):
        p = self.pilots.get(str(ap))
        if p is None:
            return []
        files = p.requests if name == protocol.REQUESTS else p.statuses
        return [(seq, item.path) for seq, item in sorted(files.items())]

    def _payload_logs(self, ap):  # synthetic pilots print nothing
        return []

    def _find(self, path):
        path = Path(path)
        p = self.pilots[str(path.parent)]
        seq = int(path.name.split(".")[1])
        return p, (p.requests if path.name.startswith(protocol.REQUESTS) else p.statuses), seq

    def _load_event_request(self, path):
        _p, files, seq = self._find(path)
        return files[seq]

    _load_event_status = _load_event_request

    def _read_heartbeat(self, ap):
        p = self.pilots.get(str(ap))
        return None if p is None or p.beat is None else {"protocol": 1, "time": p.beat, "state": "running"}

    def _mark_consumed(self, ap, item):
        path = Path(item if isinstance(item, (str, Path)) else item.path)
        _p, files, seq = self._find(path)
        files.pop(seq, None)
        return path.with_name(path.name + protocol.CONSUMED_SUFFIX)

    def _quarantine(self, path):
        _p, files, seq = self._find(path)
        files.pop(seq, None)
        return Path(path).with_name(Path(path).name + protocol.BAD_SUFFIX)

    def _write_event_ranges(self, ap, seq, ranges, no_more=()):
        p = self.pilots[str(ap)]
        path = Path(ap) / f"{protocol.RANGES}.{int(seq)}.json"
        if int(seq) in p.answered:  # as the real write: exclusive, a sequence is never written twice
            raise protocol.ProtocolError(f"{path}: sequence already used; take the next one")
        p.answered.add(int(seq))
        for lst in ranges.values():
            p.held.extend(dict(r) for r in lst)
        if p.panda_id in set(int(x) for x in no_more):
            p.no_more = True
        p.waiting = False
        return path
