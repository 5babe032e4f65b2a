"""Server-side sortable, filterable, paged tables: the state lives in the URL, so every view is a link.

Each table on a page has a key; its query parameters are <key>.sort, <key>.desc, <key>.q and <key>.page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

PAGE_SIZE = 50


@dataclass
class View:
    key: str
    columns: list[str]
    rows: list[dict]
    total: int
    matched: int
    sort: str | None
    desc: bool
    query: str
    page: int
    pages: int
    params: dict[str, str] = field(default_factory=dict)

    def link(self, **changes: Any) -> str:
        """A query string with this table's state changed (other tables' state kept)."""
        params = dict(self.params)
        for name, value in changes.items():
            full = f"{self.key}.{name}"
            if value in (None, "", False, 0) and name != "page":
                params.pop(full, None)
            else:
                params[full] = str(int(value) if isinstance(value, bool) else value)
        return "?" + urlencode(params)

    def sort_link(self, column: str) -> str:
        return self.link(sort=column, desc=(self.sort == column and not self.desc), page=1)


def _sort_key(value: Any) -> tuple:
    # None last, numbers before text, numbers compared as numbers
    if value is None or value == "":
        return (2, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value).lower())


def view(
    key: str,
    rows: Sequence[Mapping],
    columns: Sequence[str],
    params: Mapping[str, str],
    default_sort: str | None = None,
    default_desc: bool = False,
    page_size: int = PAGE_SIZE,
) -> View:
    """Filter (substring over all columns, case-insensitive), sort by one column, cut one page."""
    sort = params.get(f"{key}.sort") or default_sort
    if sort not in columns:
        sort = default_sort
    desc = params.get(f"{key}.desc", "1" if default_desc else "0") == "1"
    query = (params.get(f"{key}.q") or "").strip()
    table = [dict(r) for r in rows]
    total = len(table)
    if query:
        needle = query.lower()
        table = [r for r in table if any(needle in str(r.get(c, "")).lower() for c in columns)]
    if sort:
        table.sort(key=lambda r: _sort_key(r.get(sort)), reverse=desc)
    pages = max(1, -(-len(table) // page_size))
    try:
        page = min(max(1, int(params.get(f"{key}.page", "1"))), pages)
    except ValueError:
        page = 1
    return View(
        key,
        list(columns),
        table[(page - 1) * page_size : page * page_size],
        total,
        len(table),
        sort,
        desc,
        query,
        page,
        pages,
        {k: v for k, v in params.items()},
    )
