"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir (Debian's postgresql, installed by
scripts/setup), listening on 127.0.0.1 at a free port, trust authentication, removed at the end.

As root the server runs as the `postgres` user (initdb refuses root). `shared()` is the one cluster of a test
session (started on first use, removed at exit). A test of the central service gets a database of its own that
already holds the schema (`fresh_database()`: CREATE DATABASE ... TEMPLATE, a file copy of ~20 ms, where making
the schema takes ~70); a test about creating or upgrading the schema gets an empty schema (`fresh_url()`).
Without PostgreSQL the tests skip, except under CI=true where a missing server is a failure.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self) -> None:
        binaries = bin_dir()
        if binaries is None:
            message = "PostgreSQL (initdb, pg_ctl) is not installed: run scripts/setup"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="harvester-edge-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        self.dbname = "harvester"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.dbname)
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"
        self._template: str | None = None

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True, cwd="/")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def fresh_url(self) -> str:
        """A URL whose search_path is a new, empty schema."""
        import psycopg

        schema = "t" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{self.url}?options=-csearch_path%3D{schema}"

    def database_url(self, name: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def fresh_database(self) -> str:
        """The URL of a new database with the central service's schema: a copy of a template made once."""
        import psycopg

        from harvester_edge.central.store.database import open_database

        if self._template is None:
            template = "central_template"
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {template}")
            files = Path(tempfile.mkdtemp(prefix="harvester-edge-pg-template-"))
            open_database(self.database_url(template), files).close()  # the schema, then no session stays on it
            shutil.rmtree(files, ignore_errors=True)
            self._template = template
        name = "t" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url, autocommit=True) as conn:
            # FILE_COPY (PostgreSQL 15+) copies the few small files; the default WAL_LOG writes them through the WAL
            strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {self._template}{strategy}")
        return self.database_url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                shutil.rmtree(self.root)
                return
            except OSError:
                time.sleep(0.1)


class ReadConn:
    """A read-only view of a PostgreSQL central DB that takes the statements tests write for SQLite (`?`):
    `with ReadConn(url) as conn: conn.execute(sql, params).fetchall()`, as with sqlite3.connect(...)."""

    def __init__(self, url: str) -> None:
        import psycopg

        from harvester_edge.central.store import pg

        self._translate = pg.translate
        self._conn = psycopg.connect(url, autocommit=True)
        self._conn.adapters.register_loader("numeric", pg._NumericLoader)

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(self._translate(sql), params)

    def __enter__(self) -> ReadConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()


_shared: Cluster | None = None


def shared() -> Cluster:
    """The session's one cluster: started on first use (skips or, under CI=true, fails without PostgreSQL)."""
    global _shared
    if _shared is None:
        _shared = Cluster()
        atexit.register(_shared.close)
    return _shared
