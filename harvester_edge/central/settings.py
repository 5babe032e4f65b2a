"""The `central:` section of the site config: where the central service lives and how it authenticates."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from harvester_edge.durations import Duration, IntDuration

from .errors import CentralError


class TokenSettings(BaseModel, extra="forbid"):
    """JWT settings of the service (signing side) and of the harvester as a client of a remote service."""

    secret_file: Path | None = Field(
        None,
        description="HS256 signing secret of the service; created (mode 0600) when missing. "
        "None = <db dir>/central.secret",
    )
    access_lifetime: IntDuration = Field(3600, description="lifetime of short-lived access tokens")
    key_lifetime: IntDuration = Field(96 * 3600, description="lifetime of a pilot's secret token key")
    initial_lifetime: IntDuration = Field(96 * 3600, description="lifetime of the initial long-lived pilot token")
    key_min_interval: IntDuration = Field(3600, description="at most one new key per client in this interval")
    audience: str = Field("harvester-edge", min_length=1)
    issuer: str = Field("harvester-edge-central", min_length=1)
    token_file: Path | None = Field(None, description="client side: file holding the harvester's bearer token")
    key_file: Path | None = Field(None, description="client side: file holding the harvester's token key")


class PoolSettings(BaseModel, extra="forbid"):
    """Connections to PostgreSQL (central.db: postgresql://...), per service process; SQLite ignores them."""

    pool_size: int = Field(8, ge=1, le=1000, description="reader connections at most (the writer has one more)")
    connect_timeout: Duration = Field(5, gt=0, le=300, description="seconds to wait for a new connection")
    lock_timeout: Duration = Field(
        5, gt=0, le=300, description="seconds a statement waits for a row lock before it fails (and is retried)"
    )
    lock_retries: int = Field(
        8, ge=0, le=100, description="times a write that met a locked job row (NOWAIT) or a deadlock is run again"
    )


class CentralSettings(BaseModel, extra="forbid"):
    """Embedded (a thread of the daemon) or remote (a URL) central service."""

    mode: Literal["embedded", "remote"] = "embedded"
    url: str | None = Field(None, description="base URL of a remote service (mode: remote)")
    host: str = Field("127.0.0.1", description="listen address of the embedded/standalone service")
    port: int = Field(0, ge=0, le=65535, description="listen port; 0 = pick a free one")
    unix_socket: Path | None = Field(None, description="listen on this unix socket instead of host:port")
    db: Path | str | None = Field(
        None,
        description="central SQLite file (None = <work_dir>/central.db) or a PostgreSQL URL "
        "postgresql://user:password@host:port/dbname for several service processes and many edge nodes",
    )
    files_dir: Path | None = Field(
        None,
        description="with a PostgreSQL central.db: the folder of the service's files (signing secret, jedilog); "
        "None = the site's work_dir",
    )
    pool: PoolSettings = Field(default_factory=PoolSettings)
    trusted: bool = Field(False, description="no tokens at all (loopback, unix socket or trusted_networks only)")
    trusted_networks: list[str] = Field(default_factory=list, description="CIDRs allowed in trusted mode")
    unix_socket_mode: int = Field(
        0o600, ge=0, le=0o777, description="file mode of central.unix_socket (0660 with unix_socket_group to share it)"
    )
    unix_socket_group: str | None = Field(None, description="group of central.unix_socket (None = yours)")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="more Host names the service answers to "
        "(besides localhost, IP addresses and this machine's name); '*' = any",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="web origins (scheme://host:port) allowed to make state-changing calls besides the service's own",
    )
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    # client side, to a remote PanDA server (mode: remote): how the harvester authenticates
    origin: str | None = Field(
        None,
        description="client: sent as the Origin header on every call; a real PanDA "
        "server needs it with a token (the token's VO and role, e.g. atlas.production)",
    )
    cert_file: Path | None = Field(
        None,
        description="client: x509 client certificate (PEM; may hold the key too, "
        "e.g. a proxy) presented to a remote server over https",
    )
    key_file: Path | None = Field(None, description="client: private key of cert_file (PEM) if not in cert_file")
    ca_bundle: Path | None = Field(
        None,
        description="client: CA certificates (PEM file or c_rehash'ed directory) "
        "that verify the remote server; None = the system's CAs",
    )
    pilot_log_dir: Path | None = Field(
        None,
        description="where PanDA pilots stage out job log tarballs (their -a "
        "work directory with `mv` stage-out): the monitor's job page serves "
        "<dir>/<logFile> or <dir>/<one sub-directory>/<logFile>",
    )
    payload_log_max_mb: float = Field(
        16.0,
        gt=0,
        le=100_000,
        description="payload log lines kept per job (their text, MiB): later lines are dropped and the job's "
        "log is marked truncated (README 'Payload logs')",
    )
    heartbeat_timeout: IntDuration = Field(2 * 3600, description="jobs without heartbeat this long fail (code 100)")
    watchdog_interval: Duration = Field(60, gt=0)
    max_attempts: int = Field(3, ge=1, le=100, description="default attempts of a task's ranges")
    request_timeout: Duration = Field(30, gt=0, description="client: seconds per HTTP request")
    body_timeout: Duration = Field(
        60,
        gt=0,
        le=3600,
        description="server: a request whose body is not complete this "
        "long after its headers is answered 408 and closed",
    )
    header_timeout: Duration = Field(
        10,
        gt=0,
        le=300,
        description="server: a connection that has not sent a "
        "request's complete headers this long after connecting is closed",
    )
    max_connections: int = Field(
        4096,
        ge=16,
        le=1_000_000,
        description="server: open connections at most (kept "
        "under the open-file limit); beyond it the connection waiting longest for its "
        "headers is closed, and requests are answered 503 while all are busy",
    )
    max_body: int = Field(
        16 * 1024 * 1024,
        ge=64 * 1024,
        le=1024**3,
        description="largest request body in bytes, as sent and once gzip is inflated; larger "
        "is refused with HTTP 413 before it is parsed (default 16 MiB)",
    )

    @field_validator("trusted_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"expected a CIDR such as 10.0.0.0/8, got {cidr!r}") from exc
        return value

    @field_validator("db", mode="plain")
    @classmethod
    def _db(cls, value: object) -> Path | str | None:
        """A postgresql:// (or postgres://) URL stays a string; anything else is a SQLite file path."""
        if value is None or isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a SQLite file path or a postgresql:// URL, got {value!r:.80}")
        if value.startswith(("postgresql://", "postgres://")):
            return value
        if "://" in value:
            raise ValueError(f"expected a SQLite file path or a postgresql:// URL, got {value.split('://')[0]}://...")
        return Path(value)

    @field_validator("unix_socket_mode", mode="before")
    @classmethod
    def _octal(cls, value: object) -> object:
        if isinstance(value, str):  # "0660" or "0o660" quoted in YAML: a file mode is octal
            try:
                return int(value.removeprefix("0o"), 8)
            except ValueError as exc:
                raise ValueError(f"expected an octal file mode such as 0600 or 0660, got {value!r}") from exc
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"https?://[^/?#\s]+", origin.rstrip("/")):
                raise ValueError(f"expected a web origin such as https://monitor.example.org:8443, got {origin!r}")
        return value

    @model_validator(mode="after")
    def _remote_needs_url(self) -> CentralSettings:
        if self.mode == "remote" and not self.url:
            raise ValueError("mode 'remote' needs url: the base URL of the central service (e.g. https://host:8443)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file is set without cert_file: set cert_file to the client certificate")
        return self


def db_target(settings: CentralSettings) -> Path | str:
    """central.db as set: a SQLite file or a postgresql:// URL."""
    if settings.db is None:
        raise CentralError("central.db is not set: the site config loader sets it to <work_dir>/central.db")
    return settings.db


def db_path(settings: CentralSettings) -> Path:
    """Where the service's files sit beside (central.secret, jedilog/): the SQLite file, or with PostgreSQL a
    name in central.files_dir."""
    target = db_target(settings)
    if isinstance(target, str):
        if settings.files_dir is None:
            raise CentralError("central.db is a PostgreSQL URL: set central.files_dir (the service's files)")
        return Path(settings.files_dir) / "central.db"
    return Path(target)
