"""Fixtures of the contract tests: the real PanDA server's api/v1 code on 127.0.0.1 (contract/harness.py).

Harvester's communicator (test_harvester_communicator.py) talks to this project's central service, on SQLite and
on PostgreSQL; the other tests run this project's client against panda-server's code (no central service of
ours, so one run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.harness import PandaServer, start_panda_server


@pytest.fixture
def start_panda():
    """start_panda(tmp, tls=(cert, key, ca)) -> PandaServer; stopped at the end of the test."""
    started: list[PandaServer] = []

    def start(tmp: Path, **kwargs) -> PandaServer:
        started.append(start_panda_server(tmp, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.proc.terminate()
        server.proc.wait(10)


@pytest.fixture
def panda_server(tmp_path, start_panda):
    return start_panda(tmp_path)
