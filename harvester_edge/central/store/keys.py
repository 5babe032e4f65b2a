"""token_keys: the secret keys clients exchange for tokens (hashes only), with scope, parent key and claims."""

from __future__ import annotations

import json
import sqlite3

from .conn import Conn
from .pg import is_pg


def state(conn: Conn, key_id: str) -> sqlite3.Row | None:
    """(revoked, expires) of the key."""
    return conn.execute("SELECT revoked, expires FROM token_keys WHERE key_id=?", (key_id,)).fetchone()


def get(conn: Conn, key_id: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM token_keys WHERE key_id=?", (key_id,)).fetchone()


def recent_count(conn: Conn, client_name: str, since: float) -> int:
    """The client's unrevoked keys with a secret created after `since`."""
    return conn.execute(
        "SELECT count(*) FROM token_keys WHERE client_name=? AND created > ? AND revoked=0 AND key_hash != ''",
        (client_name, since),
    ).fetchone()[0]


def insert(
    conn: Conn,
    client_name: str,
    key_id: str,
    key_hash: str,
    now: float,
    expires: float,
    scope: str,
    parent: str | None,
    claims: str | None,
) -> None:
    conn.execute(
        "INSERT INTO token_keys (client_name, key_id, key_hash, created, expires, revoked, scope, "
        "parent, claims) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
        (client_name, key_id, key_hash, now, expires, scope, parent, claims),
    )


def usable(conn: Conn, client_name: str, now: float) -> list[sqlite3.Row]:
    """The client's unrevoked, unexpired keys with a secret: key_id, key_hash, expires, scope, claims."""
    return conn.execute(
        "SELECT key_id, key_hash, expires, scope, claims FROM token_keys WHERE client_name=? "
        "AND revoked=0 AND expires > ? AND key_hash != ''",
        (client_name, now),
    ).fetchall()


def revoke_family(conn: Conn, client_name: str) -> int:
    """Revoke every key of the client and every key minted from them (recursively); how many were revoked."""
    family = [
        r[0]
        for r in conn.execute(
            "WITH RECURSIVE fam(key_id) AS (SELECT key_id FROM token_keys WHERE client_name=? "
            "UNION SELECT k.key_id FROM token_keys k JOIN fam ON k.parent = fam.key_id) "
            "SELECT key_id FROM fam",
            (client_name,),
        )
    ]
    if is_pg(conn):
        return conn.execute("UPDATE token_keys SET revoked=1 WHERE revoked=0 AND key_id = ANY(?)", (family,)).rowcount
    return conn.execute(
        "UPDATE token_keys SET revoked=1 WHERE revoked=0 AND key_id IN (SELECT value FROM json_each(?))",
        (json.dumps(family),),
    ).rowcount


def listing(conn: Conn) -> list[sqlite3.Row]:
    """Every key, newest first: key_id, client_name, scope, created, expires, revoked, parent, secret."""
    return conn.execute(
        "SELECT key_id, client_name, scope, created, expires, revoked, parent, key_hash != '' AS secret "
        "FROM token_keys ORDER BY created DESC"
    ).fetchall()
