"""Shared fixtures: a service with a clock the test moves, and real servers, each over BOTH backends: a SQLite file
in tmp_path and a fresh schema of a throwaway PostgreSQL cluster (tests/pgcluster.py, one per session)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

# hypothesis keeps caches (unicode tables, examples) in ./.hypothesis by default: nothing in the working directory
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "harvester-edge-hypothesis"))

from harvester_edge.central.server import EmbeddedCentral
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from pgcluster import Cluster

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
def pg_cluster():
    cluster = Cluster()
    yield cluster
    cluster.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def central_db(backend, tmp_path, request) -> Path | str:
    """central.db for this test: the SQLite file tmp_path/central.db or a PostgreSQL URL (an empty schema)."""
    if backend == "sqlite":
        return tmp_path / "central.db"
    return request.getfixturevalue("pg_cluster").fresh_url()


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
