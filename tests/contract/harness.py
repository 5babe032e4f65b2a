"""Start the real PanDA server's /api/v1 code (panda-server 1.0.4, in its own virtualenv made by scripts/setup ->
scripts/panda-server-venv) on 127.0.0.1: tests/contract/panda_app.py, its database layer a recording fake.
Used by tests/contract and tests/replay (`from contract.harness import ...`).

Under CI=true a missing virtualenv is a failure, elsewhere a skip with the command that makes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import need

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOKEN, ORIGIN = "contract-token-1", "atlas.production"


def panda_server_venv() -> Path:
    """The panda-server virtualenv (PANDA_SERVER_VENV or ~/.harvester-edge/panda-server-venv), checked usable."""
    venv = Path(os.environ.get("PANDA_SERVER_VENV") or Path.home() / ".harvester-edge" / "panda-server-venv")
    need(
        (venv / ".harvester-edge-ready").exists() and (venv / "bin" / "python").exists(),
        f"the panda-server virtualenv {venv} (run scripts/panda-server-venv as root; scripts/setup does)",
    )
    return venv


@dataclass
class PandaServer:
    url: str
    calls_file: Path
    proc: subprocess.Popen
    token: str | None = TOKEN
    origin: str | None = ORIGIN

    def calls(self, method: str | None = None) -> list[dict]:
        if not self.calls_file.exists():
            return []
        rows = [json.loads(line) for line in self.calls_file.read_text().splitlines() if line.strip()]
        return [r for r in rows if method is None or r["method"] == method]


def start_panda_server(
    tmp: Path,
    token: str | None = TOKEN,
    origin: str | None = ORIGIN,
    tls: tuple[Path, Path, Path] | None = None,
    env_extra: dict | None = None,
) -> PandaServer:
    venv = panda_server_venv()
    port_file, calls = tmp / "panda.port", tmp / "panda.calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PANDA_HOME=str(venv), PANDA_BEHIND_REAL_LB="1")
    if token:
        env["PANDA_CONTRACT_TOKEN"] = token
    if origin:
        env["PANDA_CONTRACT_ORIGIN"] = origin
    env.update(env_extra or {})
    argv = [str(venv / "bin" / "python"), str(HERE / "panda_app.py"), str(port_file), str(calls)]
    if tls:
        argv += ["--tls", *map(str, tls)]
    log = open(tmp / "panda_app.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(
                f"the real-server harness did not start: {(tmp / 'panda_app.log').read_text()[-3000:]}"
            )
        time.sleep(0.1)
    scheme = "https" if tls else "http"
    return PandaServer(f"{scheme}://127.0.0.1:{port_file.read_text()}", calls, proc, token, origin)
