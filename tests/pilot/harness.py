"""Running the real PanDA pilot (panda-pilot from PyPI, in its own virtualenv) against the embedded service.

scripts/setup makes the virtualenv (PILOT_VENV below); tests find its interpreter with pilot_python(). Under CI=true
a missing pilot is a failure, elsewhere a skip. Everything listens on 127.0.0.1; the pilot always runs with
PILOT_NOKILL=1 (its orphan cleanup would otherwise kill every process of this user whose parent is PID 1).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("launcher.py")
ES_DRIVER = Path(__file__).with_name("es_driver.py")
QUEUEDATA = ROOT / "configs" / "pilot-queuedata.json"
STORAGEDATA = ROOT / "configs" / "pilot-storagedata.json"
PILOT_VENV = Path(os.environ.get("HARVESTER_EDGE_PILOT_VENV", Path.home() / ".harvester-edge" / "pilot-venv"))
ORIGIN = "edge.pilot"  # PANDA_AUTH_ORIGIN: <vo>.<role>, not a web origin (guard.py lets it pass)


def pilot_python() -> str:
    """The pilot virtualenv's interpreter; fail under CI (scripts/setup installs it), skip elsewhere."""
    python = PILOT_VENV / "bin" / "python"
    ok = (
        python.exists()
        and subprocess.run([str(python), "-c", "import pilot.workflow.generic"], capture_output=True).returncode == 0
    )
    if not ok:
        message = (
            f"the PanDA pilot is not installed in {PILOT_VENV} (scripts/setup makes it: "
            f"python -m venv {PILOT_VENV} && {PILOT_VENV}/bin/pip install panda-pilot)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(python)


class TrfServer:
    """A local http server for transformations; remembers the paths it served."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.served: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root.parent), **kwargs)

            def do_GET(self):
                outer.served.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/trf"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, script: str) -> str:
        path = self.root / name
        path.write_text(script)
        return f"{self.base}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_proxy(directory: Path) -> Path:
    """An X509 'proxy': a self-signed certificate and its key in one file (the pilot only needs the file)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harvester-edge test pilot")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = directory / "x509up"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


@dataclass
class PilotRun:
    returncode: int
    output: str
    workdir: Path
    seconds: float
    calls: dict[str, int] = field(default_factory=dict)

    def updates(self, state: str) -> int:
        """How many updateJob calls with this state the pilot sent (from its own log)."""
        return len(re.findall(rf"send_state\s+\|\s+data=\{{'jobId': '\d+', 'state': '{state}'", self.output))

    def log_tarballs(self) -> list[Path]:
        return sorted(self.workdir.rglob("*.log.tgz"))


class PilotSite:
    """Files and environment of one pilot 'site': queue data, proxy or token files, work and output dirs."""

    def __init__(self, tmp: Path, central_url: str, trf: TrfServer) -> None:
        self.tmp = tmp
        self.url = central_url
        self.trf = trf
        queue = json.loads(QUEUEDATA.read_text())
        self.queue = queue["nickname"]
        self.queuedata = tmp / "queuedata.json"
        self.queuedata.write_text(json.dumps(queue))
        self.schedconf = tmp / "schedconf.json"
        self.schedconf.write_text(json.dumps({self.queue: queue}))
        self.proxy = make_proxy(tmp)
        self.token_dir = tmp / "auth"

    def use_token(self, token: str, key: str) -> None:
        self.token_dir.mkdir(exist_ok=True)
        (self.token_dir / "token").write_text(token)
        (self.token_dir / "token_key").write_text(key)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PANDA_", "PILOT_", "X509_", "OIDC_"))}
        env.pop("PYTHONPATH", None)  # the pilot runs on its own virtualenv only
        env.update(
            {
                "PILOT_NOKILL": "1",
                "NO_CVMFS_OK": "1",
                "X509_USER_PROXY": str(self.proxy),
                "LOCAL_AGIS_SCHEDCONF": str(self.schedconf),
                "PANDA_BASE_URLS": self.trf.base,
                "HARVESTER_ID": "edge-test",
                "HARVESTER_WORKER_ID": "1",
            }
        )
        if (self.token_dir / "token").exists():
            env.update(
                {
                    "PANDA_AUTH_TOKEN": "token",
                    "PANDA_AUTH_TOKEN_KEY": "token_key",
                    # the pilot looks in dirname(PANDA_AUTH_DIR): a trailing slash names the folder itself
                    "PANDA_AUTH_DIR": f"{self.token_dir}/",
                    "PANDA_AUTH_ORIGIN": ORIGIN,
                }
            )
        return env

    def run(
        self, *extra: str, heartbeat: int = 2, timeout: float = 300, script: Path = LAUNCHER, name: str = "pilot"
    ) -> PilotRun:
        """The real pilot against the service; `timeout` only bounds a hung run (a loaded 2-core machine took 150 s
        for a run that takes 30 s alone)."""
        import time

        workdir = self.tmp / name
        workdir.mkdir(exist_ok=True)
        host, port = self.url.rsplit(":", 1)
        argv = [
            pilot_python(),
            str(script),
            "-q",
            self.queue,
            "-a",
            str(workdir),
            "--url",
            host,
            "-p",
            port,
            "--pilot-user",
            "generic",
            "-w",
            "generic",
            "-j",
            "managed",
            "--queuedata-url",
            str(self.queuedata),
            "--storagedata-url",
            str(STORAGEDATA),
            "--output-dir",
            str(self.tmp / "outputs"),
            "--heartbeat",
            str(heartbeat),
            "-d",
            *extra,
        ]
        t0 = time.monotonic()
        proc = subprocess.run(argv, env=self.env(), cwd=str(self.tmp), capture_output=True, text=True, timeout=timeout)
        (self.tmp / f"{name}.out").write_text(proc.stdout + proc.stderr)  # for a failing test's reader
        return PilotRun(proc.returncode, proc.stdout + proc.stderr, workdir, time.monotonic() - t0)


def trf_script(sleep: float = 0, exit_code: int = 0) -> str:
    return (
        f"#!/bin/sh\n# a test transformation: prints its arguments, works a little, exits {exit_code}\n"
        f'echo "trf args: $*"\nsleep {sleep}\necho result > result.txt\nexit {exit_code}\n'
    )


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
