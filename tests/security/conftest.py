"""Fixtures of the security tests: the central service on both backends (central/conftest.py: `central_db` per
test, `module_central_db` for a service a module shares)."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.conftest import backend, central_db, module_backend, new_central_db, pg_cluster


@pytest.fixture(scope="module")
def module_central_db(module_backend, tmp_path_factory) -> Path | str:
    """A central.db for a module's shared service: a PostgreSQL URL, or a SQLite path (a site keeps its default
    <work_dir>/central.db: only the URL is passed on)."""
    return new_central_db(module_backend, tmp_path_factory.mktemp("central"))
