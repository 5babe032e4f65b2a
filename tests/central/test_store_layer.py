"""The central service keeps all of its SQL in its database layer (harvester_edge/central/store/), issue 14 item 1."""

from __future__ import annotations

import re
from pathlib import Path

import harvester_edge.central as central

CENTRAL = Path(central.__file__).parent
SQL = re.compile(
    r"""\.execute(many|script)?\(|["'](SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|PRAGMA|SAVEPOINT|RELEASE|ROLLBACK)\b"""
)


def test_no_sql_outside_the_central_store() -> None:
    found = [
        f"{path.relative_to(CENTRAL)}:{n}: {line.strip()}"
        for path in sorted(CENTRAL.glob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if SQL.search(line)
    ]
    assert found == [], "SQL outside harvester_edge/central/store/:\n" + "\n".join(found)


def test_the_pattern_sees_sql() -> None:
    """The check above can fail: it finds a statement and an execute call."""
    assert SQL.search('    row = conn.execute("SELECT 1")')
    assert SQL.search("    conn.executemany(sql, rows)")
    assert SQL.search('    sql = "UPDATE jobs SET status=?"')
    assert not SQL.search("    row = task_rows.get(conn, task_id)")


def test_the_store_is_where_the_sql_is() -> None:
    store = CENTRAL / "store"
    modules = {p.stem for p in store.glob("*.py")}
    assert {"database", "tasks", "jobs", "ranges", "rules", "keys", "harvesters", "monitor"} <= modules
    assert "CREATE TABLE IF NOT EXISTS ranges" in (store / "database.py").read_text()
