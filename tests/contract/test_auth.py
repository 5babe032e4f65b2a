"""Authentication to a real server: x509 client certificate + key + CA bundle, Origin, a token file read on every
call. The server is the real PanDA api/v1 code behind an https listener (ssl module) with a self-signed CA that
REQUIRES a client certificate; the client certificate's subject becomes the caller's DN, as mod_ssl does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from contract.harness import ORIGIN, TOKEN
from harvester_edge.central.client import CentralAuthFailed, CentralClient, CentralUnavailable
from harvester_edge.central.settings import CentralSettings
from harvester_edge.site import remote_transport


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA; and a stranger."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=edge test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, subject, ext in (
        ("server", "/CN=localhost", ["-extfile", "san.ext"]),
        ("client", "/O=edge/CN=harvester-edge robot", []),
    ):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            *ext,
            cwd=d,
        )
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=stranger",
        "-keyout",
        "stranger.key",
        "-out",
        "stranger.pem",
        cwd=d,
    )
    return d


def settings(url: str, pki: Path, token_file: Path, **changes) -> CentralSettings:
    base = dict(
        mode="remote",
        url=url,
        origin=ORIGIN,
        cert_file=pki / "client.pem",
        key_file=pki / "client.key",
        ca_bundle=pki / "ca.pem",
        tokens={"token_file": token_file},
    )
    base.update(changes)
    return CentralSettings(**base)


def client_for(s: CentralSettings) -> CentralClient:
    return CentralClient(remote_transport(s, s.url), token_file=s.tokens.token_file, origin=s.origin)


def test_x509_origin_and_token_file_against_https_with_client_certificates(start_panda, pki, tmp_path):
    server = start_panda(tmp_path, tls=(pki / "server.pem", pki / "server.key", pki / "ca.pem"))
    assert server.url.startswith("https://")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    good = client_for(settings(server.url, pki, token_file))
    jobs = good.acquire_jobs("EDGE_SITE", n_jobs=1)
    assert jobs and jobs[0]["jobsetID"] == 77
    seen = server.calls("http")[-1]["kwargs"]
    assert seen["origin"] == ORIGIN and "harvester-edge robot" in seen["client_dn"]  # the certificate's subject

    # the token file is read on every call: an external tool renews it, the running client uses it at once
    token_file.write_text("lapsed")
    with pytest.raises(CentralAuthFailed):
        good.acquire_jobs("EDGE_SITE")
    token_file.write_text(TOKEN + "\n")
    assert good.acquire_jobs("EDGE_SITE")

    # no client certificate, a certificate of another CA, or a server we cannot verify: no answer at all
    for bad in (
        settings(server.url, pki, token_file, cert_file=None, key_file=None),
        settings(server.url, pki, token_file, cert_file=pki / "stranger.pem", key_file=pki / "stranger.key"),
        settings(server.url, pki, token_file, ca_bundle=None),
    ):
        with pytest.raises(CentralUnavailable):
            client_for(bad).acquire_jobs("EDGE_SITE")
    # no Origin: the server refuses the token
    with pytest.raises(CentralAuthFailed):
        client_for(settings(server.url, pki, token_file, origin=None)).acquire_jobs("EDGE_SITE")


def test_settings_name_missing_files(pki, tmp_path):
    from harvester_edge.errors import ConfigError

    s = settings("https://127.0.0.1:1", pki, tmp_path / "token", cert_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="central.cert_file: .*nope.pem does not exist"):
        remote_transport(s, s.url)
    with pytest.raises(ValueError, match="key_file is set without cert_file"):
        CentralSettings(mode="remote", url="https://x", key_file=pki / "client.key")
