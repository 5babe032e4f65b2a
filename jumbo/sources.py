"""Where rank 0 gets event ranges and sends their statuses: the shared-file messenger, or the central service.

Both sources have ``poll(now, queued, low_water) -> [task]`` (a task is {"pid": PandaID, "range": {...}}),
``exhausted`` (every job has said "no more ranges") and ``report(results)``; ``errors`` collects problems a
human should see (they end up in worker_attributes.json). A persistent pilot (``idle_timeout``) out of ranges asks
the FileSource for another job: ``request_job()`` writes the request, ``new_jobs(now)`` looks for the answer and
adds its jobs to ``jobs`` (the dict every part of rank 0 shares).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jumbo import protocol

log = logging.getLogger(__name__)


class FileSource:
    """Ranges through the access point: worker_requestevents.<seq>.json out, JobsEventRanges.<seq>.json in."""

    def __init__(self, ap: Path, jobs: dict[int, dict], n_ranges: int, poll_interval: float):
        self.ap, self.jobs, self.n_ranges, self.poll_interval = Path(ap), jobs, int(n_ranges), float(poll_interval)
        self.no_more: set[int] = set()
        self.outstanding: int | None = None
        self.next_request = protocol.next_seq(ap, protocol.REQUESTS)
        self.next_status = protocol.next_seq(ap, protocol.STATUS)
        self.next_job_request = protocol.next_seq(ap, protocol.JOB_REQUESTS)
        self.job_request: int | None = None  # the open job request
        self._last_job_look = float("-inf")
        self.errors: list[str] = []
        self._last_poll = float("-inf")
        self._not_before = float("-inf")
        self.empty_backoff = max(1.0, 10 * self.poll_interval)

    @property
    def exhausted(self) -> bool:
        return self.no_more >= set(self.jobs)

    def poll(self, now: float, queued: int, low_water: int) -> list[dict]:
        if now - self._last_poll < self.poll_interval:
            return []
        self._last_poll = now
        tasks: list[dict] = []
        for seq, path in protocol.pending(self.ap, protocol.RANGES):
            try:
                answer = protocol.load_event_ranges(path)
            except (protocol.ProtocolError, OSError) as exc:
                bad = protocol.quarantine(path)
                msg = f"ranges file rejected and renamed to {bad.name}: {exc}"
                log.error("%s; the harvester must send these ranges again", msg)
                self.errors.append(msg)
                if self.outstanding is not None and seq >= self.outstanding:
                    self.outstanding = None  # the answer is unusable: ask again
                continue
            for pid, ranges in answer.ranges.items():
                if pid not in self.jobs:
                    msg = f"{path.name}: {len(ranges)} ranges for job {pid}, which is not in {protocol.JOB_SPEC}"
                    log.error("%s; they are ignored", msg)
                    self.errors.append(msg)
                    continue
                tasks.extend({"pid": pid, "range": rng} for rng in ranges)
            self.no_more |= answer.no_more
            protocol.mark_consumed(self.ap, path)
            if self.outstanding is not None and answer.seq >= self.outstanding:
                self.outstanding = None
                if not any(answer.ranges.values()) and not answer.no_more:
                    self._not_before = now + self.empty_backoff  # nothing yet: do not flood the harvester
        if (
            self.outstanding is None
            and not self.exhausted
            and queued + len(tasks) < low_water
            and now >= self._not_before
        ):
            requests = {
                pid: {
                    "pandaID": pid,
                    "taskID": job["taskID"],
                    "jobsetID": job.get("jobsetID"),
                    "nRanges": self.n_ranges,
                }
                for pid, job in self.jobs.items()
                if pid not in self.no_more
            }
            protocol.write_event_request(self.ap, self.next_request, requests)
            log.debug("asked for ranges: request %d for jobs %s", self.next_request, sorted(requests))
            self.outstanding = self.next_request
            self.next_request += 1
        return tasks

    def request_job(self) -> int:
        """Ask the harvester for another job (any task that fits this queue); one request open at a time."""
        if self.job_request is None:
            protocol.write_job_request(self.ap, self.next_job_request)
            self.job_request = self.next_job_request
            self.next_job_request += 1
            log.info("out of ranges: asked for another job (request %d)", self.job_request)
        return self.job_request

    def new_jobs(self, now: float) -> protocol.NewJobs | None:
        """The harvester's answer to the open job request, if it came (looked for every poll_interval). Its jobs
        join ``jobs`` and may get ranges at once; a job given again (its task has ranges again) is asked again."""
        if self.job_request is None or now - self._last_job_look < self.poll_interval:
            return None
        self._last_job_look = now
        for seq, path in protocol.pending(self.ap, protocol.NEW_JOBS):
            try:
                answer = protocol.load_new_jobs(path)
            except (protocol.ProtocolError, OSError) as exc:
                bad = protocol.quarantine(path)
                msg = f"new jobs file rejected and renamed to {bad.name}: {exc}"
                log.error("%s; the pilot asks again", msg)
                self.errors.append(msg)
                self.job_request = None
                continue
            protocol.mark_consumed(self.ap, path)
            if seq != self.job_request:
                log.warning(
                    "%s answers job request %d, not the open one (%d): ignored", path.name, seq, self.job_request
                )
                continue
            self.job_request = None
            for job in answer.jobs:
                pid = int(job["PandaID"])
                self.jobs[pid] = job
                self.no_more.discard(pid)
            self._last_poll = self._not_before = float("-inf")  # ask ranges of the new jobs at once
            return answer
        return None

    def report(self, results: list[dict]) -> None:
        events: dict[int, list[dict]] = {}
        for res in results:
            events.setdefault(res["PandaID"], []).append({k: v for k, v in res.items() if k != "PandaID"})
        protocol.write_event_status(self.ap, self.next_status, events)
        self.next_status += 1


class HTTPSource:
    """Ranges straight from a PanDA-compatible central service's /api/v1 (envelope {"success","message","data"}).

    The Bearer token is read from ``token_file`` at every call, so a token refreshed by the harvester is used at
    once. Not-done ranges are not sent (PanDA has no such status): the central service releases a job's
    unfinished ranges when the job ends or loses its heartbeat. Statuses that fail to go out are kept and retried.
    """

    def __init__(
        self,
        url: str,
        token_file: str | None,
        jobs: dict[int, dict],
        n_ranges: int,
        poll_interval: float,
        timeout: float = 30.0,
    ):
        import requests  # only the HTTP mode needs it

        self.url, self.token_file, self.jobs = url.rstrip("/"), token_file, jobs
        self.n_ranges, self.poll_interval, self.timeout = int(n_ranges), float(poll_interval), float(timeout)
        self.session = requests.Session()
        self.no_more: set[int] = set()
        self.errors: list[str] = []
        self.outbox: list[dict] = []
        self._last_poll = float("-inf")

    @property
    def exhausted(self) -> bool:
        return self.no_more >= set(self.jobs)

    def _call(self, method: str, body: dict):
        headers = {"Accept": "application/json"}
        if self.token_file:
            headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        resp = self.session.post(f"{self.url}/api/v1/{method}", json=body, headers=headers, timeout=self.timeout)
        try:
            env = resp.json()
        except ValueError:
            env = None
        if resp.status_code >= 400 or not isinstance(env, dict) or not env.get("success"):
            message = env.get("message") if isinstance(env, dict) else resp.text[:200]
            raise RuntimeError(f"{method}: HTTP {resp.status_code}, central service said: {message}")
        return env.get("data")

    def _note(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)

    def poll(self, now: float, queued: int, low_water: int) -> list[dict]:
        if now - self._last_poll < self.poll_interval or self.exhausted or queued >= low_water:
            return []
        self._last_poll = now
        tasks: list[dict] = []
        for pid, job in self.jobs.items():
            if pid in self.no_more:
                continue
            try:
                data = self._call(
                    "event/acquire_event_ranges",
                    {
                        "job_id": pid,
                        "jobset_id": job.get("jobsetID"),
                        "task_id": job["taskID"],
                        "n_ranges": self.n_ranges,
                    },
                )
            except Exception as exc:
                log.warning(
                    "acquire_event_ranges for job %d failed (%s); retrying in %.1f s", pid, exc, self.poll_interval
                )
                self._note(str(exc))
                continue
            if not data:
                self.no_more.add(pid)
                continue
            for rng in data:
                protocol.validate_range(rng, Path(f"{self.url}/api/v1/event/acquire_event_ranges"))
                tasks.append({"pid": pid, "range": rng})
        return tasks

    def report(self, results: list[dict]) -> None:
        self.outbox.extend(
            {
                "eventRangeID": r["eventRangeID"],
                "eventStatus": r["eventStatus"],
                "errorCode": r.get("errorCode", 0),
                "errorDiag": r.get("errorDiag", ""),
                "cpuConsumptionTime": r.get("cpuTime", 0.0),
                "coreCount": 1,
            }
            for r in results
            if r["eventStatus"] in ("finished", "failed")
        )
        if not self.outbox:
            return
        try:
            self._call("event/update_event_ranges", {"event_ranges": json.dumps(self.outbox), "version": 0})
        except Exception as exc:
            log.warning("update_event_ranges of %d ranges failed (%s); kept for the next flush", len(self.outbox), exc)
            self._note(str(exc))
            return
        self.outbox = []

    def flush_pending(self) -> bool:
        """True when nothing waits in the outbox (retries it once)."""
        if self.outbox:
            self.report([])
        return not self.outbox


def make_source(ap: Path, jobs: dict[int, dict], settings: dict, n_ranges: int):
    if settings["mode"] == "http":
        return HTTPSource(
            settings["central_url"], settings.get("token_file"), jobs, n_ranges, settings["poll_interval"]
        )
    return FileSource(ap, jobs, n_ranges, settings["poll_interval"])
