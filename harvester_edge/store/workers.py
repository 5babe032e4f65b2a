"""The workers table: one row per batch job running a pilot (see states.WorkerState for its life).

A row is created NEW with a placeholder job name, then named after its id in the same transaction. The state column
changes only through rows.transition; the agents lease rows with rows.claim. kill_requested is a flag the operator,
the sweeper and the propagator set and the sweeper acts on (it never moves the state: the batch system does).
Queries on live workers name their states, so the workers_state index skips the ever-growing ended history.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from harvester_edge.states import ACTIVE_WORKER_STATES, WORKER_ENDED, WORKER_LIVE, RangeState, WorkerState

W = WorkerState
_LIVE = tuple(s.value for s in WORKER_LIVE)
_ENDED = tuple(s.value for s in WORKER_ENDED)


def insert_new(
    conn: sqlite3.Connection, queue: str, job_name: str, nodes: int, ranks_per_node: int, walltime: int, now: float
) -> int:
    """A NEW worker without an access point yet (set_identity names both once the id is known)."""
    cur = conn.execute(
        "INSERT INTO workers (queue, state, job_name, access_point, nodes, ranks_per_node, walltime,"
        " created_at, updated_at) VALUES (?, ?, ?, '', ?, ?, ?, ?, ?)",
        (queue, W.NEW.value, job_name, nodes, ranks_per_node, walltime, now, now),
    )
    return int(cur.lastrowid or 0)


def set_identity(conn: sqlite3.Connection, worker_id: int, job_name: str, access_point: str) -> None:
    conn.execute("UPDATE workers SET job_name = ?, access_point = ? WHERE id = ?", (job_name, access_point, worker_id))


def access_point(conn: sqlite3.Connection, worker_id: int) -> str:
    return conn.execute("SELECT access_point FROM workers WHERE id = ?", (worker_id,)).fetchone()[0]


def live_counts(conn: sqlite3.Connection, queue: str) -> dict[str, int]:
    """{state: count} of the queue's unfinished workers."""
    return dict(
        conn.execute(
            f"SELECT state, count(*) FROM workers WHERE state IN ({','.join('?' * 4)}) AND queue = ? GROUP BY state",
            (*_LIVE, queue),
        ).fetchall()
    )


def recent_failures(conn: sqlite3.Connection, queue: str, since: float) -> int:
    """Workers of the queue that failed with an error (a refused submission) after `since`."""
    # the state as a literal: SQLite uses the partial index workers_failed only for a WHERE that names its state
    return conn.execute(
        f"SELECT count(*) FROM workers WHERE queue = ? AND state = '{W.FAILED.value}' AND error IS NOT NULL "
        "AND updated_at > ?",
        (queue, since),
    ).fetchone()[0]


def live_of_job(conn: sqlite3.Connection, panda_id: int) -> list[sqlite3.Row]:
    return conn.execute(
        # from the few active workers to the job link (CROSS JOIN keeps that order): a job's finished
        # workers, which grow without bound, are never read
        "SELECT w.* FROM workers w CROSS JOIN job_workers jw ON jw.worker_id = w.id AND jw.panda_id = ? "
        "AND jw.left_at IS NULL WHERE w.state IN (?, ?, ?, ?)",
        (panda_id, *_LIVE),
    ).fetchall()


def live_access_points(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, access_point) of every unfinished worker."""
    marks = ",".join("?" * len(_LIVE))
    return conn.execute(f"SELECT id, access_point FROM workers WHERE state IN ({marks})", _LIVE).fetchall()


def in_batch(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, access_point, ranks) of the queued and running workers: those whose pilot may ask for ranges."""
    return conn.execute(
        "SELECT w.id, w.access_point, w.nodes * w.ranks_per_node AS ranks FROM workers w WHERE w.state IN (?, ?)",
        (W.QUEUED.value, W.RUNNING.value),
    ).fetchall()


def running_of_queue(conn: sqlite3.Connection, queue: str) -> list[sqlite3.Row]:
    """(id, access_point, kill_requested) of the queue's running workers: those whose pilot may ask for a job."""
    return conn.execute(
        "SELECT id, access_point, kill_requested FROM workers WHERE state = ? AND queue = ?",
        (W.RUNNING.value, queue),
    ).fetchall()


def flag_queued_too_long(conn: sqlite3.Connection, error: str, now: float, submitted_before: float) -> list[Any]:
    """Request the kill of QUEUED workers submitted before `submitted_before`; returns their ids."""
    return conn.execute(
        "UPDATE workers SET kill_requested = 1, error = ?, updated_at = ? WHERE state = ? AND "
        "kill_requested = 0 AND submitted_at < ? RETURNING id",
        (error, now, W.QUEUED.value, submitted_before),
    ).fetchall()


def flag_silent(conn: sqlite3.Connection, error: str, now: float, heard_before: float) -> list[Any]:
    """Request the kill of RUNNING workers not heard of (heartbeat, else start) since `heard_before`."""
    return conn.execute(
        "UPDATE workers SET kill_requested = 1, error = ?, updated_at = ? WHERE state = ? AND "
        "kill_requested = 0 AND coalesce(heartbeat_at, started_at) < ? RETURNING id, access_point",
        (error, now, W.RUNNING.value, heard_before),
    ).fetchall()


def flag_of_job(conn: sqlite3.Connection, panda_id: int, now: float) -> None:
    """Request the kill of the job's unfinished workers (the central service killed the job)."""
    conn.execute(
        "UPDATE workers SET kill_requested = 1, updated_at = ? WHERE id IN (SELECT worker_id FROM "
        "job_workers WHERE panda_id = ? AND left_at IS NULL) AND state IN (?, ?, ?, ?)",
        (now, panda_id, *_LIVE),
    )


def kill_requested_new(conn: sqlite3.Connection) -> list[int]:
    """NEW workers flagged for a kill: never submitted, so cancelled in the book only."""
    return [r[0] for r in conn.execute("SELECT id FROM workers WHERE kill_requested = 1 AND state = ?", (W.NEW.value,))]


def kill_requested_in_batch(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, queue, batch_id, access_point) of flagged workers the batch system holds."""
    return conn.execute(
        "SELECT id, queue, batch_id, access_point FROM workers WHERE kill_requested = 1 AND "
        "state IN (?, ?) AND batch_id IS NOT NULL",
        (W.QUEUED.value, W.RUNNING.value),
    ).fetchall()


def killable(
    conn: sqlite3.Connection,
    states: Sequence[str],
    *,
    worker_ids: list[int] | None = None,
    queue: str | None = None,
    state: str | None = None,
    panda_id: int | None = None,
) -> list[int]:
    """Ids of workers in `states` that match every given filter (the operator's kill-workers)."""
    sql = f"SELECT id FROM workers WHERE state IN ({','.join('?' * len(states))})"
    params: list[Any] = list(states)
    if worker_ids:
        sql += f" AND id IN ({','.join('?' * len(worker_ids))})"
        params += worker_ids
    if queue:
        sql += " AND queue = ?"
        params.append(queue)
    if state:
        sql += " AND state = ?"
        params.append(state)
    if panda_id is not None:
        sql += " AND id IN (SELECT worker_id FROM job_workers WHERE panda_id = ?)"
        params.append(panda_id)
    return [r[0] for r in conn.execute(sql, params)]


def flag_killed_by_operator(conn: sqlite3.Connection, ids: list[int], now: float) -> None:
    conn.executemany(
        "UPDATE workers SET kill_requested = 1, error = coalesce(error, 'killed by operator'), "
        "updated_at = ? WHERE id = ?",
        [(now, i) for i in ids],
    )


def uncleaned_ended(conn: sqlite3.Connection, ended_before: float, limit: int = 200) -> list[sqlite3.Row]:
    """(id, access_point) of ended workers whose access point is still there and no range is dispatched to."""
    return conn.execute(
        f"SELECT id, access_point FROM workers WHERE state IN ({','.join('?' * len(_ENDED))}) "
        "AND cleaned_at IS NULL AND coalesce(ended_at, updated_at) < ? AND NOT EXISTS (SELECT 1 FROM "
        f"event_ranges e WHERE e.worker_id = workers.id AND e.state = '{RangeState.DISPATCHED.value}') LIMIT {limit}",
        (*_ENDED, ended_before),
    ).fetchall()


def mark_cleaned(conn: sqlite3.Connection, ids: list[int], now: float) -> None:
    conn.executemany("UPDATE workers SET cleaned_at = ? WHERE id = ?", [(now, i) for i in ids])


def delete_unreferenced(conn: sqlite3.Connection, ids: list[int]) -> int:
    """Delete the workers among `ids` that no job link and no range refers to any more; returns how many."""
    wids = ",".join("?" * len(ids))
    return conn.execute(
        f"DELETE FROM workers WHERE id IN ({wids}) AND NOT EXISTS (SELECT 1 FROM job_workers jw "
        f"WHERE jw.worker_id = workers.id) AND NOT EXISTS (SELECT 1 FROM event_ranges e "
        f"WHERE e.worker_id = workers.id)",
        ids,
    ).rowcount


def count_by_state(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(state, count) rows."""
    return conn.execute("SELECT state, count(*) FROM workers GROUP BY state").fetchall()


def count_by_queue_state(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(queue, state, count) rows, ordered by queue and state."""
    return conn.execute(
        "SELECT queue, state, count(*) AS count FROM workers GROUP BY queue, state ORDER BY queue, state"
    ).fetchall()


def queue_time_avg(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(queue, average seconds from submission to start) of the workers that started."""
    return conn.execute(
        "SELECT queue, avg(started_at - submitted_at) FROM workers WHERE started_at IS NOT NULL "
        "AND submitted_at IS NOT NULL GROUP BY queue"
    ).fetchall()


def get(conn: sqlite3.Connection, worker_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM workers WHERE id=?", (worker_id,)).fetchone()


def of_job(conn: sqlite3.Connection, panda_id: int) -> list[sqlite3.Row]:
    """Every worker that ran the job, by id."""
    return conn.execute(
        "SELECT w.* FROM workers w JOIN job_workers j ON j.worker_id = w.id WHERE j.panda_id=? ORDER BY w.id",
        (panda_id,),
    ).fetchall()


# -- what the monitor's timelines and figures read -----------------------------------------------------------------
_TASK_WORKERS = (
    "SELECT DISTINCT jw.worker_id FROM job_workers jw JOIN jobs j ON j.panda_id = jw.panda_id WHERE j.task_id=?"
)
_TIMELINE_COLUMNS = "id, queue, state, nodes, ranks_per_node, exit_code, submitted_at, started_at, ended_at, created_at"


def count_of_task(conn: sqlite3.Connection, task_id: int) -> int:
    return conn.execute(f"SELECT count(*) FROM ({_TASK_WORKERS})", (task_id,)).fetchone()[0]


def newest_of_task(conn: sqlite3.Connection, task_id: int, limit: int) -> list[sqlite3.Row]:
    """Timeline columns of the task's `limit` newest workers, newest first."""
    return conn.execute(
        f"SELECT {_TIMELINE_COLUMNS} FROM workers WHERE id IN ({_TASK_WORKERS}) ORDER BY id DESC LIMIT ?",
        (task_id, limit),
    ).fetchall()


def newest_of_job(conn: sqlite3.Connection, panda_id: int, limit: int) -> list[sqlite3.Row]:
    """Timeline columns of the job's `limit` newest workers, newest first."""
    return conn.execute(
        "SELECT w.id, w.queue, w.state, w.nodes, w.ranks_per_node, w.exit_code, w.submitted_at, w.started_at, "
        "w.ended_at, w.created_at FROM workers w JOIN job_workers j ON j.worker_id = w.id WHERE j.panda_id=? "
        "ORDER BY w.id DESC LIMIT ?",
        (panda_id, limit),
    ).fetchall()


def running_during(conn: sqlite3.Connection, t0: float, t1: float) -> list[sqlite3.Row]:
    """(queue, nodes, ranks_per_node, started_at, ended_at) of the workers that ran at some time in [t0, t1]."""
    return conn.execute(
        "SELECT queue, nodes, ranks_per_node, started_at, ended_at FROM workers WHERE started_at IS NOT NULL "
        "AND started_at <= ? AND (ended_at IS NULL OR ended_at >= ?)",
        (t1, t0),
    ).fetchall()


def waits(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(queue, submitted (else created), started_at) of the workers that started or wait in the batch system."""
    return conn.execute(
        "SELECT queue, coalesce(submitted_at, created_at), started_at FROM workers "
        f"WHERE started_at IS NOT NULL OR state IN ('{W.SUBMITTING.value}', '{W.QUEUED.value}')"
    ).fetchall()


def figures_of_task(conn: sqlite3.Connection, task_id: int) -> list[sqlite3.Row]:
    """(queue, state, nodes, submitted (else created), started_at, ended_at) of every worker of the task."""
    return conn.execute(
        "SELECT queue, state, nodes, coalesce(submitted_at, created_at), started_at, ended_at FROM workers "
        f"WHERE id IN ({_TASK_WORKERS})",
        (task_id,),
    ).fetchall()


# -- what the demo reads of its task -----------------------------------------------------------------------------
_OF_TASK = (
    "FROM workers w JOIN job_workers jw ON jw.worker_id = w.id JOIN jobs j ON j.panda_id = jw.panda_id "
    "WHERE j.task_id = ?"
)


def shapes_of_task(conn: sqlite3.Connection, task_id: int, now: float) -> list[sqlite3.Row]:
    """(id, ranks, started_at, ended_at or `now`, access_point) of every worker of the task, by id."""
    return conn.execute(
        "SELECT DISTINCT w.id, w.nodes * w.ranks_per_node, w.started_at, coalesce(w.ended_at, ?), w.access_point "
        f"{_OF_TASK} ORDER BY w.id",
        (now, task_id),
    ).fetchall()


def live_of_task(conn: sqlite3.Connection, task_id: int) -> list[sqlite3.Row]:
    """(id, queue, batch_id) of the task's unfinished workers."""
    return conn.execute(
        f"SELECT DISTINCT w.id, w.queue, w.batch_id {_OF_TASK} AND w.state IN (?, ?, ?, ?)", (task_id, *_LIVE)
    ).fetchall()


def live_count_of_task(conn: sqlite3.Connection, task_id: int) -> int:
    return conn.execute(
        f"SELECT count(DISTINCT w.id) {_OF_TASK} AND w.state IN (?, ?, ?, ?)", (task_id, *_LIVE)
    ).fetchone()[0]


def active_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """{state: count} of the workers the batch system holds (submitting, queued, running)."""
    active = tuple(s.value for s in ACTIVE_WORKER_STATES)
    return dict(
        conn.execute("SELECT state, count(*) FROM workers WHERE state IN (?, ?, ?) GROUP BY state", active).fetchall()
    )


def listing(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, queue, state, batch_id, exit_code, submitted_at, started_at, ended_at) of every worker."""
    return conn.execute(
        "SELECT id, queue, state, batch_id, exit_code, submitted_at, started_at, ended_at FROM workers"
    ).fetchall()


def ended_by_queue(conn: sqlite3.Connection, since: float) -> list[sqlite3.Row]:
    """(queue, state, count) of the workers that ended after `since` (the worker_failures alert's window)."""
    marks = ",".join("?" * len(_ENDED))
    # the time index (migration 0012), not the state index the planner would take (nearly every row of a long
    # history has an ended state): the cost follows the window, not the history kept
    return conn.execute(
        f"SELECT queue, state, count(*) FROM workers INDEXED BY workers_ended_time WHERE state IN ({marks}) "
        "AND coalesce(ended_at, updated_at) > ? GROUP BY queue, state",
        (*_ENDED, since),
    ).fetchall()


def live_nodes(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """{(queue, state): nodes} of the unfinished workers (pledges: cores in use and waiting)."""
    return {
        (r[0], r[1]): int(r[2])
        for r in conn.execute(
            f"SELECT queue, state, sum(nodes) FROM workers WHERE state IN ({','.join('?' * 4)}) GROUP BY queue, state",
            _LIVE,
        )
    }


def node_seconds_since(conn: sqlite3.Connection, since: float, now: float) -> dict[str, float]:
    """{queue: node-seconds} the workers ran between since and now (running ones: until now; one that ended
    without an end time: until its last update)."""
    running = W.RUNNING.value
    return {
        r[0]: float(r[1] or 0.0)
        for r in conn.execute(
            "SELECT queue, sum(nodes * max(0.0, min(coalesce(ended_at, CASE WHEN state = ? THEN ? ELSE updated_at "
            "END), ?) - max(started_at, ?))) FROM workers WHERE started_at IS NOT NULL "
            "AND coalesce(ended_at, updated_at) >= ? OR state = ? GROUP BY queue",
            (running, now, now, since, since, running),
        )
    }
