"""The verbs agents use on stateful rows: claim (lease), transition, update, release.

All take a connection inside `store.write()` and work on many rows per statement (ids passed as one JSON array
through json_each, so there is no limit on the number of bound parameters). A lease is (owner, expiry): an agent
claims rows in one UPDATE ... RETURNING; an expired lease is claimable again; every change made under a lease checks
that the lease is still held, so a stalled agent whose rows were taken over cannot overwrite them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any

from harvester_edge.errors import IllegalTransition, LeaseLost, StoreError
from harvester_edge.states import JobState, OutboxState, RangeState, WorkerState, check_transition

TABLES: dict[type[Enum], tuple[str, str]] = {
    JobState: ("jobs", "panda_id"),
    WorkerState: ("workers", "id"),
    RangeState: ("event_ranges", "range_id"),
    OutboxState: ("outbox", "id"),
}
LEASED_TABLES = ("jobs", "workers", "event_ranges")
_IDS = "(SELECT value FROM json_each(?))"


def _require_transaction(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:
        raise StoreError("state changes must run inside store.write(); this connection has no open transaction")


def _lease_clause(owner: str | None, now: float) -> tuple[str, list[Any]]:
    if owner is None:
        return "", []
    return " AND lease_owner = ? AND lease_expires >= ?", [owner, now]


def transition(
    conn: sqlite3.Connection,
    ids: Iterable[Any],
    src: Enum,
    dst: Enum,
    *,
    now: float,
    owner: str | None = None,
    reason: str | None = None,
    values: dict[str, Any] | None = None,
) -> int:
    """Move every row in `ids` from `src` to `dst` (and set `values` on them), or none of them.

    Raises IllegalTransition if src -> dst is not allowed, or if a row is not in `src`; LeaseLost if `owner` is given
    and a row's lease is no longer held by it. The caller's transaction is then rolled back by store.write().
    """
    check_transition(src, dst)
    _require_transaction(conn)
    ids = list(dict.fromkeys(ids))
    if not ids:
        return 0
    table, key = TABLES[type(src)]
    values = dict(values or {})
    sets = ", ".join(["state = ?", "updated_at = ?"] + [f"{col} = ?" for col in values])
    lease_sql, lease_params = _lease_clause(owner, now)
    params = [dst.value, now, *values.values(), json.dumps(ids), src.value, *lease_params]
    # "+state": keep the planner on the primary key; the state index would visit every row in `src`
    cur = conn.execute(f"UPDATE {table} SET {sets} WHERE {key} IN {_IDS} AND +state = ?{lease_sql}", params)
    if cur.rowcount != len(ids):
        _explain(conn, table, key, ids, src, dst, owner, now)
    conn.execute(
        "INSERT INTO state_history (kind, object_id, src, dst, at, reason) "
        "SELECT ?, value, ?, ?, ?, ? FROM json_each(?)",
        (table, src.value, dst.value, now, reason, json.dumps(ids)),
    )
    return cur.rowcount


def transition_each(
    conn: sqlite3.Connection, pairs: Sequence[tuple[Any, str | None]], src: Enum, dst: Enum, *, now: float
) -> int:
    """transition() of many rows, each with its own history reason ([(id, reason), ...]), in two statements."""
    check_transition(src, dst)
    _require_transaction(conn)
    pairs = list({i: (i, r) for i, r in pairs}.values())
    if not pairs:
        return 0
    table, key = TABLES[type(src)]
    ids = [i for i, _ in pairs]
    cur = conn.execute(
        f"UPDATE {table} SET state = ?, updated_at = ? WHERE {key} IN {_IDS} AND +state = ?",
        (dst.value, now, json.dumps(ids), src.value),
    )
    if cur.rowcount != len(ids):
        _explain(conn, table, key, ids, src, dst, None, now)
    conn.execute(
        "INSERT INTO state_history (kind, object_id, src, dst, at, reason) "
        "SELECT ?, json_extract(value, '$[0]'), ?, ?, ?, json_extract(value, '$[1]') FROM json_each(?)",
        (table, src.value, dst.value, now, json.dumps(pairs)),
    )
    return cur.rowcount


def transition_rows(conn: sqlite3.Connection, rows: Iterable[tuple[Any, Enum]], dst: Enum, **kwargs: Any) -> int:
    """transition() for rows in different current states: [(id, current_state), ...] grouped by state."""
    by_state: dict[Enum, list[Any]] = {}
    for row_id, state in rows:
        by_state.setdefault(state, []).append(row_id)
    return sum(transition(conn, ids, src, dst, **kwargs) for src, ids in by_state.items())


def _explain(
    conn: sqlite3.Connection, table: str, key: str, ids: list[Any], src: Enum, dst: Enum, owner: str | None, now: float
) -> None:
    found = {
        row[0]: row
        for row in conn.execute(
            f"SELECT {key}, state, lease_owner, lease_expires FROM {table} WHERE {key} IN {_IDS}", (json.dumps(ids),)
        )
    }
    missing = [i for i in ids if i not in found]
    if missing:
        raise StoreError(f"{table}: no rows with {key} {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    wrong = [(i, found[i][1]) for i in ids if found[i][1] != src.value]
    if wrong:
        shown = ", ".join(f"{i} is {s}" for i, s in wrong[:5])
        raise IllegalTransition(
            f"{table}: cannot move {src.value} -> {dst.value}: {shown}"
            f"{' ...' if len(wrong) > 5 else ''} (not {src.value})"
        )
    lost = [i for i in ids if found[i][2] != owner or (found[i][3] or 0) < now]
    raise LeaseLost(
        f"{table}: {owner} no longer holds the lease on {key} {lost[:5]}; another agent took them over "
        "after the lease expired, so this cycle's changes were rolled back"
    )


def update(
    conn: sqlite3.Connection,
    table: str,
    key: str,
    rows: Sequence[dict[str, Any]],
    *,
    now: float,
    owner: str | None = None,
) -> int:
    """Set per-row columns (not `state`: that goes through transition). Each dict has `key` plus the columns."""
    _require_transaction(conn)
    if not rows:
        return 0
    columns = [c for c in rows[0] if c != key]
    if "state" in columns:
        raise StoreError(f"{table}: state changes go through transition(), not update()")
    lease_sql, lease_params = _lease_clause(owner, now)
    sql = f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)}, updated_at = ? WHERE {key} = ?{lease_sql}"
    cur = conn.executemany(sql, [[row[c] for c in columns] + [now, row[key]] + lease_params for row in rows])
    if owner is not None and cur.rowcount != len(rows):
        raise LeaseLost(f"{table}: {owner} lost the lease on some of {len(rows)} rows; changes rolled back")
    return cur.rowcount


def claim(
    conn: sqlite3.Connection,
    kind: type[Enum],
    owner: str,
    *,
    states: Iterable[Enum],
    now: float,
    lease_time: float,
    limit: int,
    where: str = "",
    params: Sequence[Any] = (),
) -> list[sqlite3.Row]:
    """Lease up to `limit` rows in `states` that nobody else holds, in one statement; returns the rows.

    `where` is an extra SQL condition on the table's columns (with `params`), e.g. "AND queue = ?".
    No ORDER BY: the state index already yields rows oldest first per state, and sorting would make SQLite visit
    every matching row before LIMIT applies.
    """
    _require_transaction(conn)
    table, key = TABLES[kind]
    sql = (
        f"UPDATE {table} SET lease_owner = ?, lease_expires = ? WHERE {key} IN ("
        f"SELECT {key} FROM {table} WHERE state IN {_IDS} "
        f"AND (lease_owner IS NULL OR lease_expires < ? OR lease_owner = ?) {where} LIMIT ?) "
        f"RETURNING *"
    )
    state_list = json.dumps([s.value for s in states])
    return conn.execute(sql, [owner, now + lease_time, state_list, now, owner, *params, limit]).fetchall()


def release(conn: sqlite3.Connection, kind: type[Enum], owner: str, ids: Iterable[Any] | None = None) -> int:
    """Give back leases held by `owner` (all of them, or those in `ids`)."""
    table, key = TABLES[kind]
    if ids is None:
        cur = conn.execute(
            f"UPDATE {table} SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ?", (owner,)
        )
    else:
        cur = conn.execute(
            f"UPDATE {table} SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ? AND {key} IN {_IDS}",
            (owner, json.dumps(list(ids))),
        )
    return cur.rowcount


def release_all(conn: sqlite3.Connection, owner_prefix: str) -> int:
    """Release every lease whose owner starts with `owner_prefix` (a daemon's agents, at shutdown)."""
    total = 0
    for table in LEASED_TABLES:
        total += conn.execute(
            f"UPDATE {table} SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner LIKE ? ESCAPE '\\'",
            (owner_prefix.replace("%", "\\%").replace("_", "\\_") + "%",),
        ).rowcount
    return total
