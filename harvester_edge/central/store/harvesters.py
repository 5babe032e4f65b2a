"""harvesters, workers and worker_nodes: what harvesters report about themselves, their workers and nodes."""

from __future__ import annotations

import sqlite3

from .conn import Conn, WriteConn
from .pg import is_pg


def heartbeat(conn: Conn, harvester_id: str, attrs: str, now: float) -> None:
    """The harvester's last heartbeat and its attributes (JSON)."""
    conn.execute(
        "INSERT INTO harvesters (harvester_id, last_heartbeat, attrs) VALUES (?, ?, ?) "
        "ON CONFLICT (harvester_id) DO UPDATE SET last_heartbeat=excluded.last_heartbeat, attrs=excluded.attrs",
        (harvester_id, now, attrs),
    )


def service_metrics(conn: Conn, harvester_id: str, metrics: str) -> None:
    """Store the harvester's latest service metrics (JSON) as attrs.service_metrics."""
    if is_pg(conn):
        conn.execute(
            "INSERT INTO harvesters (harvester_id, attrs) VALUES (?, jsonb_build_object('service_metrics', "
            "?::jsonb)::text) ON CONFLICT (harvester_id) DO UPDATE SET attrs=jsonb_set(coalesce(harvesters.attrs, "
            "'{}')::jsonb, '{service_metrics}', ?::jsonb)::text",
            (harvester_id, metrics, metrics),
        )
        return
    conn.execute(
        "INSERT INTO harvesters (harvester_id, attrs) VALUES (?, json_object('service_metrics', json(?))) "
        "ON CONFLICT (harvester_id) DO UPDATE SET attrs=json_set(coalesce(attrs, '{}'), '$.service_metrics', "
        "json(?))",
        (harvester_id, metrics, metrics),
    )


def upsert_workers(conn: WriteConn, harvester_id: str, rows: list[tuple], now: float) -> None:
    """rows: (worker_id, status, site, node, attrs JSON); a missing site or node keeps the old one."""
    conn.executemany(
        "INSERT INTO workers (harvester_id, worker_id, status, site, node, attrs, modified) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (harvester_id, worker_id) DO UPDATE SET status=excluded.status, "
        "site=coalesce(excluded.site, workers.site), node=coalesce(excluded.node, workers.node), attrs=excluded.attrs, "
        "modified=excluded.modified",
        [(harvester_id, *row, now) for row in rows],
    )


def pilot_status(conn: Conn, row: tuple, now: float) -> None:
    """row: (harvester_id, worker_id, pilot_status, site, node)."""
    conn.execute(
        "INSERT INTO workers (harvester_id, worker_id, pilot_status, site, node, modified) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (harvester_id, worker_id) DO UPDATE SET "
        "pilot_status=excluded.pilot_status, node=coalesce(excluded.node, workers.node), modified=excluded.modified",
        (*row, now),
    )


def worker_attrs(conn: Conn, harvester_id: str, worker_id: str) -> sqlite3.Row | None:
    """A row with the worker's reported attributes (JSON text or None)."""
    return conn.execute(
        "SELECT attrs FROM workers WHERE harvester_id=? AND worker_id=?", (harvester_id, worker_id)
    ).fetchone()


def max_worker_id(conn: Conn, harvester_id: str) -> int:
    """The largest numeric worker id of the harvester (0 without one)."""
    if is_pg(conn):
        row = conn.execute(
            "SELECT max(CAST(worker_id AS BIGINT)) FROM workers WHERE harvester_id=? AND worker_id ~ '^[0-9]{1,18}$'",
            (harvester_id,),
        ).fetchone()
        return int(row[0] or 0)
    row = conn.execute(
        "SELECT max(CAST(worker_id AS INTEGER)) FROM workers WHERE harvester_id=? AND worker_id != '' "
        "AND worker_id NOT GLOB '*[^0-9]*' AND length(worker_id) < 19",
        (harvester_id,),
    ).fetchone()
    return int(row[0] or 0)


def worker_counts(conn: Conn, since: float) -> list[sqlite3.Row]:
    """(site, harvester_id, jobType, resourceType, status, count) of the workers updated since then."""
    if is_pg(conn):  # attrs is written as JSON by upsert_workers (json.dumps)
        return conn.execute(
            "SELECT coalesce(site, ''), harvester_id, coalesce(attrs::jsonb ->> 'jobType', 'ANY'), "
            "coalesce(attrs::jsonb ->> 'resourceType', 'ANY'), coalesce(status, 'unknown'), count(*) "
            "FROM workers WHERE modified >= ? GROUP BY 1, 2, 3, 4, 5",
            (since,),
        ).fetchall()
    return conn.execute(
        "SELECT coalesce(site, ''), harvester_id, coalesce(json_extract(attrs, '$.jobType'), 'ANY'), "
        "coalesce(json_extract(attrs, '$.resourceType'), 'ANY'), coalesce(status, 'unknown'), count(*) "
        "FROM workers WHERE modified >= ? AND (attrs IS NULL OR json_valid(attrs)) GROUP BY 1, 2, 3, 4, 5",
        (since,),
    ).fetchall()


def worker_node(conn: Conn, site: str, host_name: str, gpu: bool, text: str, now: float) -> None:
    """A pilot's description of its node (gpu: of its GPUs), one row per (site, host)."""
    column = "gpus" if gpu else "attrs"
    conn.execute(
        f"INSERT INTO worker_nodes (site, host_name, {column}, modified) VALUES (?, ?, ?, ?) "
        f"ON CONFLICT (site, host_name) DO UPDATE SET {column}=excluded.{column}, modified=excluded.modified",
        (site, host_name, text, now),
    )
