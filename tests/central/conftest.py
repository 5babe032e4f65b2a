"""Shared fixtures: a service with a clock the test moves, and real servers, each over BOTH backends: a SQLite file
in tmp_path and a fresh database of a throwaway PostgreSQL cluster (tests/pgcluster.py, one per session).

A test of the central service takes `central_db` (parametrized by `backend`) wherever it would name a SQLite file,
`db_settings` for its CentralSettings, and `db_rows` to read rows behind the service's back; other test folders
import these by name (from central.conftest import backend, central_db, pg_cluster)."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

# hypothesis keeps caches (unicode tables, examples) in ./.hypothesis by default: nothing in the working directory
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "harvester-edge-hypothesis"))

from harvester_edge.central.server import EmbeddedCentral
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.central.store import pg
from pgcluster import Cluster, shared

PAYLOAD = {"kind": "python", "callable": "jumbo.payloads:simulate", "args": {"size": 8}}


def task_dict(**over) -> dict:
    base = {
        "name": "t",
        "payload": PAYLOAD,
        "events": 100,
        "events_per_range": 10,
        "seconds_per_event": 0.5,
        "jobs": 1,
        "max_attempts": 2,
    }
    base.update(over)
    return base


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def pg_cluster() -> Cluster:
    """The session's one throwaway cluster (pgcluster.shared: one however many modules import this fixture)."""
    return shared()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


def new_central_db(backend: str, folder: Path) -> Path | str:
    """A new central.db: the SQLite file folder/central.db or a PostgreSQL URL (a new database with the schema)."""
    return folder / "central.db" if backend == "sqlite" else shared().fresh_database()


@pytest.fixture
def central_db(backend, tmp_path) -> Path | str:
    """central.db for this test: the SQLite file tmp_path/central.db or a PostgreSQL URL (a new database)."""
    return new_central_db(backend, tmp_path)


@pytest.fixture
def empty_central_db(backend, tmp_path) -> Path | str:
    """central_db with nothing in it yet (on PostgreSQL an empty schema): for tests of making the schema."""
    return tmp_path / "central.db" if backend == "sqlite" else shared().fresh_url()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_backend(request) -> str:
    """`backend` for a service a whole module shares (one per backend: the module's tests run once on each)."""
    return request.param


def db_rows(central_db: Path | str, sql: str, params: Any = ()) -> list[tuple]:
    """Rows of one statement (SQLite text, `?` placeholders) read straight from either backend, read-only."""
    if isinstance(central_db, str):
        with psycopg.connect(central_db, autocommit=True) as conn:
            conn.adapters.register_loader("numeric", pg._NumericLoader)
            return [tuple(r) for r in conn.execute(pg.translate(sql), params).fetchall()]
    lite = sqlite3.connect(f"file:{central_db}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in lite.execute(sql, params).fetchall()]
    finally:
        lite.close()


def db_settings(central_db: Path | str, tmp_path: Path, **over) -> CentralSettings:
    """CentralSettings over central_db (files_dir = tmp_path, used with PostgreSQL only)."""
    return CentralSettings(db=central_db, files_dir=tmp_path, **over)


@pytest.fixture
def service(central_db, tmp_path, clock):
    svc = CentralService.open(central_db, db_settings(central_db, tmp_path, heartbeat_timeout=3600), clock)
    yield svc
    svc.close()


def start_central(tmp_path, db: Path | str | None = None, **over) -> EmbeddedCentral:
    target = tmp_path / "central.db" if db is None else db
    settings = CentralSettings(db=target, files_dir=tmp_path, host="127.0.0.1", port=0, **over)
    central = EmbeddedCentral(settings)
    central.start()
    return central


@pytest.fixture
def trusted_central(tmp_path, central_db):
    central = start_central(tmp_path, central_db, trusted=True)
    yield central
    central.stop()


@pytest.fixture
def token_central(tmp_path, central_db):
    central = start_central(tmp_path, central_db, trusted=False)
    yield central
    central.stop()
