"""Fixtures: the embedded service (trusted or token mode; on SQLite and on PostgreSQL: `backend`), a transformation
server and a pilot site."""

from __future__ import annotations

import pytest

from central.conftest import backend, central_db, pg_cluster
from harvester_edge.central.server import EmbeddedCentral
from harvester_edge.central.settings import CentralSettings, TokenSettings
from harvester_edge.server import embedded_central

from .harness import PilotSite, TrfServer, pilot_python

HARVESTER, WORKER = "edge-test", "1"


@pytest.fixture(scope="session")
def pilot_installed() -> str:
    return pilot_python()


@pytest.fixture
def trf(tmp_path):
    root = tmp_path / "web" / "trf"
    root.mkdir(parents=True)
    server = TrfServer(root)
    yield server
    server.close()


def start(tmp_path, central_db, trusted: bool, access_lifetime: int = 3600) -> EmbeddedCentral:
    settings = CentralSettings(
        db=central_db,
        files_dir=tmp_path,
        host="127.0.0.1",
        port=0,
        trusted=trusted,
        tokens=TokenSettings(access_lifetime=access_lifetime),
        pilot_log_dir=tmp_path / "pilot",
    )  # the pilots' -a directory (harness.py)
    central = embedded_central(settings)  # with the monitor: the lifecycle test reads the job page
    central.start()
    return central


def pilot_credentials(central: EmbeddedCentral) -> tuple[str, str]:
    """What a harvester gives the pilot of its worker 1: the worker's own token and key (tokens.py)."""
    auth = central.authority
    harvester = auth.verify(auth.issue(HARVESTER, ["harvester"], lifetime=86400))  # its key bounds the pilot's
    name = f"{HARVESTER}/worker/{WORKER}"
    key = auth.key_for(harvester, name)[1]
    return auth.exchange(harvester, name, key), key


def make_site(tmp_path, central_db, trf, mode: str, access_lifetime: int = 3600) -> PilotSite:
    central = start(tmp_path, central_db, mode == "trusted", access_lifetime)
    site = PilotSite(tmp_path, central.url, trf)
    site.mode, site.central = mode, central
    if mode == "token":
        site.use_token(*pilot_credentials(central))
    return site


@pytest.fixture(params=["trusted", "token"])
def site(request, tmp_path, central_db, trf, pilot_installed):
    """A running service in the mode of the parameter and a pilot site pointed at it."""
    site = make_site(tmp_path, central_db, trf, request.param)
    yield site
    site.central.stop()


@pytest.fixture
def trusted_site(tmp_path, central_db, trf, pilot_installed):
    site = make_site(tmp_path, central_db, trf, "trusted")
    yield site
    site.central.stop()


@pytest.fixture
def short_token_site(tmp_path, central_db, trf, pilot_installed):
    """Token mode with 10 s access tokens: a job of ~25 s outlives the pilot's initial token."""
    site = make_site(tmp_path, central_db, trf, "token", access_lifetime=10)
    yield site
    site.central.stop()
