"""Submitter: shape workers for jobs with uncovered events, then submit them in bulk, idempotently.

Idempotence across crashes: the worker row, its unique batch job name and its access point exist BEFORE the submit
call, and the row is committed as SUBMITTING first. A worker found in SUBMITTING on a later cycle (the daemon died
during the call) is looked up by job name in the batch system: found -> QUEUED with its batch id, not found -> NEW
(submitted again). So a batch job is never lost and never doubled.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from harvester_edge import jobpayload, pledges
from harvester_edge.agents.base import Agent
from harvester_edge.agents.persistent import idle_pilots
from harvester_edge.batch import BatchError
from harvester_edge.config import QueueConfig
from harvester_edge.shaper import Shape, queue_room, shape_workers, worker_capacity
from harvester_edge.states import WORKER_WAITING, JobState, WorkerState
from harvester_edge.store import claim, job_workers, jobs, meta, queues, release, transition, update, workers
from harvester_edge.workers import access_point, job_name, job_spec_of, worker_spec, write_job_spec

log = logging.getLogger(__name__)

W = WorkerState
BACKOFF_MAX = 600.0
PERMANENT_FAILURES_PAUSE = 3  # permanent submit failures in 10 minutes that pause a queue's new workers
PAUSE_WINDOW = 600.0  # seconds: the 10 minutes


def submit_failures(conn, queue: str, now: float) -> int:
    """Refused submissions of the queue in the last PAUSE_WINDOW; PERMANENT_FAILURES_PAUSE of them pause its new
    workers (here) and fire the `queue_paused` alert (harvester_edge.alerts.rules)."""
    return workers.recent_failures(conn, queue, now - PAUSE_WINDOW)


class Submitter(Agent):
    name = "submitter"

    def run_cycle(self, now: float) -> None:
        self.recover(now)
        conn = self.ctx.store.connection()
        draining = queues.draining_names(conn)
        shortage = pledges.shortage_known(conn)
        for queue in self.ctx.config.queues:
            if queue.name in draining:
                log.info("queue %s is draining: no new workers", queue.name, extra={"queue": queue.name})
                continue
            if shortage and queue.opportunistic:  # a WORK_SHORTAGE: the work goes to the pledged resources
                log.info("queue %s is opportunistic: no new workers in a work shortage", queue.name)
                continue
            self.make_workers(queue, now, pledges.cores_budget(conn, queue, shortage))
            self.submit(queue, now)

    # -- crash recovery -------------------------------------------------------------------------------------
    def recover(self, now: float) -> None:
        with self.ctx.store.write() as conn:
            rows = claim(
                conn,
                W,
                self.owner,
                states=[W.SUBMITTING],
                now=now,
                lease_time=self.ctx.config.daemon.lease_time,
                limit=1000,
            )
        by_queue: dict[str, list] = {}
        for row in rows:
            by_queue.setdefault(row["queue"], []).append(row)
        for queue_name, queue_rows in by_queue.items():
            plugin = self.ctx.plugins[queue_name]
            try:
                found = plugin.find_by_name([r["job_name"] for r in queue_rows])
            except BatchError as exc:
                log.warning(
                    "cannot check %d interrupted submissions on queue %s yet: %s", len(queue_rows), queue_name, exc
                )
                continue
            with self.ctx.store.write() as conn:
                for row in queue_rows:
                    batch_id = found.get(row["job_name"])
                    if batch_id:
                        update(
                            conn,
                            "workers",
                            "id",
                            [{"id": row["id"], "batch_id": batch_id, "submitted_at": now}],
                            now=now,
                            owner=self.owner,
                        )
                        transition(
                            conn,
                            [row["id"]],
                            W.SUBMITTING,
                            W.QUEUED,
                            now=now,
                            owner=self.owner,
                            reason=f"interrupted submission found in the batch system as {batch_id}",
                        )
                    else:
                        transition(
                            conn,
                            [row["id"]],
                            W.SUBMITTING,
                            W.NEW,
                            now=now,
                            owner=self.owner,
                            reason="interrupted submission not in the batch system: submit again",
                        )
                release(conn, W, self.owner, [r["id"] for r in queue_rows])
            for row in queue_rows:
                batch_id = found.get(row["job_name"])
                log.info(
                    "worker %d: interrupted submission %s",
                    row["id"],
                    f"found as batch job {batch_id}" if batch_id else "never reached the batch system",
                    extra={"worker_id": row["id"]},
                )

    # -- shaping --------------------------------------------------------------------------------------------
    def make_workers(self, queue: QueueConfig, now: float, cores_budget: int | None = None) -> None:
        """cores_budget: the cores new workers may take in all (a pledge in a work shortage); None: no limit."""
        conn = self.ctx.store.connection()
        # only the unfinished states: the workers_state index skips the ever-growing finished history
        counts = workers.live_counts(conn, queue.name)
        queued = sum(counts.get(s.value, 0) for s in WORKER_WAITING)
        room = queue_room(queue, queued, counts.get(W.RUNNING.value, 0))
        parallel = queue.max_running_workers - queued - counts.get(W.RUNNING.value, 0)  # could run at once
        if room == 0:
            return
        waiting = idle_pilots(self.ctx, queue)
        if waiting:
            log.debug("queue %s: %d idle persistent pilot(s) take the next jobs: no new worker", queue.name, waiting)
            return
        failed = submit_failures(conn, queue.name, now)
        if failed >= PERMANENT_FAILURES_PAUSE:
            log.info(
                "queue %s: %d workers failed to submit in the last 10 minutes; no new workers until that "
                "is fixed (see `harvester-edge status` and the log)",
                queue.name,
                failed,
            )
            return
        idle = self.ctx.plugins[queue.name].idle_nodes() if queue.backfill else None
        for job in jobs.wanting_workers(conn, queue.name):
            if room == 0:
                break
            spe = float(job["seconds_per_event"] or 1.0)
            running = workers.live_of_job(conn, job["panda_id"])
            spec = job_spec_of(job)
            if jobpayload.from_real_server(spec) or job["events_total"] is None:
                # a real server's job: its size in events is unknown, so one worker at a time, shaped from the
                # job's own coreCount, minRamCount and maxWalltime (jobpayload.worker_shape)
                if running:
                    continue
                real = jobpayload.worker_shape(
                    spec,
                    queue.cores_per_node,
                    queue.ranks_per_node,
                    queue.memory_mb,
                    queue.walltime_min,
                    queue.walltime_max,
                )
                shape = Shape(queue.nodes_min, real.walltime, 0)  # events unknown: the server says when done
                if cores_budget is not None:
                    if shape.nodes * queue.cores_per_node > cores_budget:
                        log.info("queue %s: no new worker beyond the pledge in a work shortage", queue.name)
                        break
                    cores_budget -= shape.nodes * queue.cores_per_node
                if idle is not None:
                    idle = max(0, idle - shape.nodes)
                self._create_worker(queue, job, shape.nodes, shape.walltime, now, real.ranks_per_node)
                log.info(
                    "job %d: new worker on %s, %d node(s) x %ds, %d ranks per node (a job of unknown size)",
                    job["panda_id"],
                    queue.name,
                    shape.nodes,
                    shape.walltime,
                    real.ranks_per_node,
                    extra={"panda_id": job["panda_id"]},
                )
                room -= 1
                parallel -= 1
                continue
            covered = sum(
                worker_capacity(
                    w["nodes"],
                    w["ranks_per_node"],
                    w["walltime"] - (now - w["started_at"] if w["started_at"] else 0),
                    spe,
                )
                for w in running
            )
            left = int(job["events_total"] or 0) - int(job["events_done"]) - covered
            # the uncovered work is shared evenly by the workers that can start now (they finish together); a
            # rest too small for a useful worker is left to the pilots that run the job already
            shapes = shape_workers(queue, left, spe, min(room, max(1, parallel)), idle, others_running=bool(running))
            if cores_budget is not None:  # a work shortage: the queue's cores stay within its pledge
                fitting = []
                for shape in shapes:
                    if shape.nodes * queue.cores_per_node > cores_budget:
                        log.info("queue %s: no new worker beyond the pledge in a work shortage", queue.name)
                        break
                    cores_budget -= shape.nodes * queue.cores_per_node
                    fitting.append(shape)
                shapes = fitting
            for shape in shapes:
                if idle is not None:
                    idle = max(0, idle - shape.nodes)
                self._create_worker(queue, job, shape.nodes, shape.walltime, now)
                log.info(
                    "job %d: new worker on %s, %s (%d events not covered, shared by %d new worker(s))",
                    job["panda_id"],
                    queue.name,
                    shape.reason,
                    left,
                    len(shapes),
                    extra={"panda_id": job["panda_id"]},
                )
            room -= len(shapes)
            parallel -= len(shapes)

    def _create_worker(
        self, queue: QueueConfig, job, nodes: int, walltime: int, now: float, ranks_per_node: int | None = None
    ) -> int:
        ranks_per_node = ranks_per_node or queue.ranks_per_node
        config = self.ctx.config
        with self.ctx.store.write() as conn:
            worker_id = workers.insert_new(
                conn, queue.name, f"pending-{secrets.token_hex(8)}", nodes, ranks_per_node, walltime, now
            )
            ap = access_point(config, worker_id)
            workers.set_identity(conn, worker_id, job_name(config.site, meta.install_id(conn), worker_id), str(ap))
            job_workers.link(conn, job["panda_id"], worker_id)
            state = jobs.state_of(conn, job["panda_id"])
            if state == JobState.FETCHED.value:  # read now: a job's first cycle may make several workers
                transition(
                    conn,
                    [job["panda_id"]],
                    JobState.FETCHED,
                    JobState.RUNNING,
                    now=now,
                    reason=f"first worker {worker_id}",
                )
            write_job_spec(
                self.ctx.files,
                Path(ap),
                [job_spec_of(job)],
                walltime,
                queue.drain_warning,
                nodes * ranks_per_node,
                queue.pilot_settings(),
            )
        return worker_id

    # -- submission -----------------------------------------------------------------------------------------
    def submit(self, queue: QueueConfig, now: float) -> None:
        with self.ctx.store.write() as conn:
            rows = claim(
                conn,
                W,
                self.owner,
                states=[W.NEW],
                now=now,
                lease_time=self.ctx.config.daemon.lease_time,
                limit=50,
                where="AND queue = ? AND kill_requested = 0 AND (next_try_at IS NULL OR next_try_at <= ?)",
                params=[queue.name, now],
            )
            transition(conn, [r["id"] for r in rows], W.NEW, W.SUBMITTING, now=now, owner=self.owner)
        if not rows:
            return
        results = self.ctx.plugins[queue.name].submit([worker_spec(r, queue) for r in rows])
        attempts = {r["id"]: r["submit_attempts"] for r in rows}
        with self.ctx.store.write() as conn:
            for res in results:
                wid = res.worker_id
                if res.ok:
                    update(
                        conn,
                        "workers",
                        "id",
                        [
                            {
                                "id": wid,
                                "batch_id": res.batch_id,
                                "submitted_at": now,
                                "submit_attempts": attempts[wid] + 1,
                                "error": None,
                            }
                        ],
                        now=now,
                        owner=self.owner,
                    )
                    transition(
                        conn,
                        [wid],
                        W.SUBMITTING,
                        W.QUEUED,
                        now=now,
                        owner=self.owner,
                        reason=f"batch id {res.batch_id}",
                    )
                elif res.transient:
                    delay = min(BACKOFF_MAX, 5.0 * 2 ** attempts[wid])
                    update(
                        conn,
                        "workers",
                        "id",
                        [
                            {
                                "id": wid,
                                "next_try_at": now + delay,
                                "error": res.error,
                                "submit_attempts": attempts[wid] + 1,
                            }
                        ],
                        now=now,
                        owner=self.owner,
                    )
                    transition(
                        conn,
                        [wid],
                        W.SUBMITTING,
                        W.NEW,
                        now=now,
                        owner=self.owner,
                        reason=f"transient submit error, retry in {delay:.0f}s: {res.error}",
                    )
                else:
                    update(
                        conn,
                        "workers",
                        "id",
                        [{"id": wid, "error": res.error, "ended_at": now, "submit_attempts": attempts[wid] + 1}],
                        now=now,
                        owner=self.owner,
                    )
                    transition(
                        conn,
                        [wid],
                        W.SUBMITTING,
                        W.FAILED,
                        now=now,
                        owner=self.owner,
                        reason=f"permanent submit error: {res.error}",
                    )
            # hand the rows over: the monitor claims queued workers, the next submit cycle retries NEW ones
            release(conn, W, self.owner, [r.worker_id for r in results])
        ok = [r for r in results if r.ok]
        for res in results:
            if not res.ok:
                (log.warning if res.transient else log.error)(
                    "worker %d: %s submit error on queue %s: %s",
                    res.worker_id,
                    "transient" if res.transient else "permanent",
                    queue.name,
                    res.error,
                    extra={"worker_id": res.worker_id},
                )
        if ok:
            log.info(
                "submitted %d worker(s) to %s: %s",
                len(ok),
                queue.name,
                ", ".join(f"{r.worker_id}={r.batch_id}" for r in ok),
                extra={"queue": queue.name},
            )
