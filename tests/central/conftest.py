"""Shared fixtures: a service over a SQLite file in tmp_path with a clock the test moves, and real servers."""

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


@pytest.fixture
def service(tmp_path, clock):
    svc = CentralService.open(tmp_path / "central.db", CentralSettings(heartbeat_timeout=3600), clock)
    yield svc
    svc.close()


def start_central(tmp_path, **over) -> EmbeddedCentral:
    settings = CentralSettings(db=tmp_path / "central.db", host="127.0.0.1", port=0, **over)
    central = EmbeddedCentral(settings)
    central.start()
    return central


@pytest.fixture
def trusted_central(tmp_path):
    central = start_central(tmp_path, trusted=True)
    yield central
    central.stop()


@pytest.fixture
def token_central(tmp_path):
    central = start_central(tmp_path, trusted=False)
    yield central
    central.stop()
