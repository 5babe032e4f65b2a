"""The connection the table modules' functions take: a sqlite3.Connection, or on PostgreSQL the reader and writer
connections of store.pg, which answer execute() (and the writer executemany()) the same way. Its own module: the
table modules import it, and database.py imports the error rules' module, which imports the table modules."""

from __future__ import annotations

from typing import Any, Protocol


class Conn(Protocol):
    """What the table modules' functions use of a connection: a sqlite3.Connection, or on PostgreSQL the
    reader/writer connections of store.pg, which answer execute() the same way."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...


class WriteConn(Conn, Protocol):
    """The writer's connection (inside Database.write): executemany besides execute."""

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...
