"""error_classes: (source, code, diag regex) -> class rules, confirmed or suggested (classify.py decides)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from .conn import Conn


def confirmed(conn: Conn, source: str, code: int) -> list[sqlite3.Row]:
    """The confirmed rules for (source, code), the longest diag pattern first."""
    return conn.execute(
        "SELECT id, diag_pattern, class FROM error_classes WHERE source=? AND code=? AND status='confirmed' "
        "ORDER BY length(diag_pattern) DESC",
        (source, code),
    ).fetchall()


def hit(conn: Conn, rule_id: int) -> None:
    conn.execute("UPDATE error_classes SET hits = hits + 1 WHERE id=?", (rule_id,))


def suggest(conn: Conn, source: str, code: int, guess: str, example: str, now: float) -> None:
    """Record (or count once more) a suggested rule for an unmatched failure."""
    conn.execute(
        "INSERT INTO error_classes (source, code, diag_pattern, class, status, hits, example, created) "
        "VALUES (?, ?, '', ?, 'suggested', 1, ?, ?) ON CONFLICT (source, code, diag_pattern) "
        "DO UPDATE SET hits = error_classes.hits + 1",
        (source, code, guess, example, now),
    )


def seed(conn: Conn, seeded: Iterable[tuple[str, int, str, str]], now: float) -> None:
    """The rules every new DB starts with: (source, code, pattern, class), confirmed."""
    for source, code, pattern, klass in seeded:
        conn.execute(
            "INSERT OR IGNORE INTO error_classes (source, code, diag_pattern, class, status, example, "
            "created) VALUES (?, ?, ?, ?, 'confirmed', 'seeded', ?)",
            (source, code, pattern, klass, now),
        )


def upsert(conn: Conn, source: str, code: int, diag_pattern: str, klass: str, status: str, now: float) -> int:
    """Add a rule or change the class and status of the same (source, code, pattern); its id."""
    cur = conn.execute(
        "INSERT INTO error_classes (source, code, diag_pattern, class, status, created) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (source, code, diag_pattern) DO UPDATE SET class=excluded.class, status=excluded.status "
        "RETURNING id",
        (source, code, diag_pattern, klass, status, now),
    )
    return cur.fetchone()[0]


def get(conn: Conn, rule_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM error_classes WHERE id=?", (rule_id,)).fetchone()


def confirm(conn: Conn, rule_id: int, klass: str) -> None:
    conn.execute("UPDATE error_classes SET status='confirmed', class=? WHERE id=?", (klass, rule_id))


def list_rules(conn: Conn, status: str | None = None) -> list[sqlite3.Row]:
    """Every rule by id; those of one status by hits (the most frequent first: what to review first), then id."""
    if status:
        sql = "SELECT * FROM error_classes WHERE status=? ORDER BY hits DESC, id"
        return conn.execute(sql, (status,)).fetchall()
    return conn.execute("SELECT * FROM error_classes ORDER BY id").fetchall()


def change(conn: Conn, rule_id: int, source: str, code: int, diag_pattern: str, klass: str, status: str) -> None:
    """An operator's edit of every field of a rule (hits and example stay)."""
    conn.execute(
        "UPDATE error_classes SET source=?, code=?, diag_pattern=?, class=?, status=? WHERE id=?",
        (source, code, diag_pattern, klass, status, rule_id),
    )


def delete(conn: Conn, rule_id: int) -> None:
    conn.execute("DELETE FROM error_classes WHERE id=?", (rule_id,))


def same_key(conn: Conn, source: str, code: int, diag_pattern: str) -> sqlite3.Row | None:
    """The rule with this (source, code, pattern), if any."""
    return conn.execute(
        "SELECT * FROM error_classes WHERE source=? AND code=? AND diag_pattern=?", (source, code, diag_pattern)
    ).fetchone()


def of_code(conn: Conn, source: str, code: int) -> list[sqlite3.Row]:
    """Every rule of (source, code), confirmed first, then by hits."""
    return conn.execute(
        "SELECT * FROM error_classes WHERE source=? AND code=? ORDER BY status='confirmed' DESC, hits DESC, id",
        (source, code),
    ).fetchall()


def record_change(
    conn: Conn, rule_id: int, action: str, who: str, now: float, before: str | None, after: str | None
) -> None:
    """One line of the rules' history: who did what to which rule, when (before/after: the rule as JSON)."""
    conn.execute(
        "INSERT INTO error_class_changes (rule_id, action, who, at, before, after) VALUES (?, ?, ?, ?, ?, ?)",
        (rule_id, action, who, now, before, after),
    )


def changes(conn: Conn, rule_id: int | None = None, limit: int = 200) -> list[sqlite3.Row]:
    """The latest changes (of one rule, or all), newest first."""
    where = " WHERE rule_id=?" if rule_id is not None else ""
    params: tuple = ((rule_id,) if rule_id is not None else ()) + (limit,)
    return conn.execute(f"SELECT * FROM error_class_changes{where} ORDER BY id DESC LIMIT ?", params).fetchall()
