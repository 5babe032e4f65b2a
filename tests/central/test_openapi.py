"""The OpenAPI document users read at /docs: every route (v1, legacy, monitor, metrics) has a summary, a description,
the scope it needs, its request and answer schemas and its error answers; and what it says about errors holds."""

from __future__ import annotations

import pytest
import requests
from fastapi import APIRouter
from fastapi.routing import APIRoute

from harvester_edge.central.apidoc import SCOPE_KEY
from harvester_edge.central.legacy import METHODS
from harvester_edge.central.service import CentralService
from harvester_edge.central.settings import CentralSettings
from harvester_edge.server import central_app, embedded_central

from .conftest import db_settings

HIDDEN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def make_app(tmp_path, extra: APIRouter | None = None):
    settings = CentralSettings(db=tmp_path / "central.db", trusted=True)
    app = central_app(settings, CentralService.open(settings.db, settings))
    if extra is not None:
        app.include_router(extra)
    return app


def problems(spec: dict) -> list[str]:
    """What a reader of the document would miss, one line per operation and gap."""
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            responses = op.get("responses", {})
            if not op.get("summary"):
                out.append(f"{where}: no summary")
            if not op.get("description") or "Scope:" not in op["description"]:
                out.append(f"{where}: no description stating its scope")
            if not isinstance(op.get(SCOPE_KEY), list):
                out.append(f"{where}: no {SCOPE_KEY}")
            if not (op.get("parameters") or op.get("requestBody") or str(op.get("x-request", "")).startswith("none")):
                out.append(f"{where}: no request schema (parameters, requestBody or x-request: none)")
            ok = responses.get("200") or responses.get("303")
            if not ok or ("content" not in ok and "303" not in responses):
                out.append(f"{where}: no schema of its answer")
            if op.get(SCOPE_KEY) and "403" not in responses:
                out.append(f"{where}: needs a scope but documents no 403")
            if op.get("requestBody") and path.startswith(("/api/v1/", "/server/panda/")) and "413" not in responses:
                out.append(f"{where}: reads a body but documents no 413")
            if path.startswith("/api/v1/") and "422" in responses:
                out.append(f"{where}: documents a 422 that /api/v1 never sends")
            if "{" in path and not path.startswith("/api/v1/") and not {"404", "400"} & set(responses):
                out.append(f"{where}: names a row but documents no 404 (or 400: refused)")
    return out


def routes(app) -> set[tuple[str, str]]:
    return {
        (m.lower(), r.path)
        for r in app.router.routes
        if isinstance(r, APIRoute) and r.include_in_schema
        for m in r.methods
    }


def test_every_route_is_documented(tmp_path):  # one backend: the documents, not the DB
    app = make_app(tmp_path)
    spec = app.openapi()
    assert problems(spec) == []
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    served = routes(app) - {("get", "/server/panda/{method}"), ("post", "/server/panda/{method}")}
    assert served - documented == set()
    legacy = {p.rsplit("/", 1)[1] for p in spec["paths"] if p.startswith("/server/panda/")}
    assert legacy == set(METHODS) | {"isAlive"}  # the one legacy route, documented per method
    for path in ("/api/v1/job/get_status", "/api/v1/file_server/upload_jedi_log", "/metrics", "/monitor/"):
        assert path in spec["paths"]
    assert spec["paths"]["/api/v1/task/submit"]["post"][SCOPE_KEY] == ["admin"]
    assert spec["paths"]["/api/v1/system/is_alive"]["get"][SCOPE_KEY] == []


def test_an_undocumented_route_fails_the_check(tmp_path):
    bare = APIRouter()

    @bare.post("/api/v1/bare/thing")
    def thing() -> dict:
        return {}

    found = problems(make_app(tmp_path, bare).openapi())
    assert any(line.startswith("POST /api/v1/bare/thing: no description") for line in found), found
    assert any("POST /api/v1/bare/thing: no request schema" in line for line in found), found


@pytest.fixture
def token_service(tmp_path, central_db):
    central = embedded_central(
        db_settings(central_db, tmp_path, host="127.0.0.1", port=0, trusted=False, max_body=64 * 1024)
    )
    central.start()
    yield central
    central.stop()


def test_the_documented_errors_are_the_ones_sent(token_service):
    url = token_service.url
    spec = requests.get(url + "/openapi.json", timeout=10).json()
    admin = {"Authorization": "Bearer " + token_service.authority.issue("ops", ["admin", "harvester"])}
    # 403: no token
    op = spec["paths"]["/api/v1/harvester/add_dialogs"]["post"]
    resp = requests.post(url + "/api/v1/harvester/add_dialogs", json={"harvester_id": "h", "dialogs": []}, timeout=10)
    assert "403" in op["responses"] and resp.status_code == 403 and resp.json()["success"] is False
    # 413: a body over central.max_body
    resp = requests.post(
        url + "/api/v1/harvester/add_dialogs",
        data=b"x" * (65 * 1024),
        timeout=10,
        headers={**admin, "Content-Type": "application/json"},
    )
    assert "413" in op["responses"] and resp.status_code == 413
    # invalid input on /api/v1: HTTP 200, success=false (no 422)
    resp = requests.post(url + "/api/v1/harvester/add_dialogs", json={"dialogs": []}, headers=admin, timeout=10)
    assert resp.status_code == 200 and resp.json()["success"] is False and "422" not in op["responses"]
    # monitor: 404 for a missing row, 422 for an id out of range
    job = spec["paths"]["/monitor/job/{panda_id}"]["get"]["responses"]
    assert requests.get(url + "/monitor/job/123", headers=admin, timeout=10).status_code == 404 and "404" in job
    assert requests.get(url + "/monitor/job/" + "9" * 30, headers=admin, timeout=10).status_code == 422 and "422" in job
    # the monitor links the docs, and the docs page is served
    page = requests.get(url + "/monitor/", headers=admin, timeout=10)
    assert page.status_code == 200 and 'href="/docs"' in page.text
    assert requests.get(url + "/docs", timeout=10).status_code == 200
