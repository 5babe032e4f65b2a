"""The one HTTP seam: every call the harvester makes to the central service passes here.

`Transport` is the seam (what the central client needs); `HttpTransport` the real one over requests. Offline replay
and the scale simulation pass their own (harvester_edge.replay: ReplayTransport, SyntheticTransport, Recording's
wrapper, which records each call after `redact_call`: Authorization headers, token parameters and the bodies of
credential answers never reach a trace).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

log = logging.getLogger(__name__)
REDACTED = "***"
SECRET_HEADERS = {"authorization", "cookie", "set-cookie", "proxy-authorization"}
SECRET_KEYS = {"token", "token_key", "access_token", "userproxy", "key", "password", "secret"}
SECRET_PATHS = ("creds/", "get_access_token", "get_token_key")


class TransportError(ConnectionError):
    """The request did not get an HTTP answer (refused, reset, timed out); the message names the URL."""


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes
    duration: float

    def json(self) -> Any:
        return json.loads(self.body)


class Transport(Protocol):
    """The HTTP seam. `params`: query parameters (a value may be a list: a repeated parameter); `json`: the body,
    anything json.dumps takes; `data`: a raw body instead. Raises TransportError when no answer came."""

    base_url: str

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: object = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> HttpResult: ...

    def close(self) -> None: ...


def redact_mapping(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: (REDACTED if str(k).lower() in SECRET_KEYS or str(k).lower() in SECRET_HEADERS else redact_mapping(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact_mapping(v) for v in data]
    return data


def redact_call(
    method: str,
    path: str,
    params: Mapping[str, Any] | None,
    json_body: object,
    headers: Mapping[str, str] | None,
    result: HttpResult | None,
    error: str | None,
) -> dict[str, Any]:
    """The record a trace keeps of one call (replay.recorder.RecordingTransport): pure, so it is tested on its own."""
    secret_answer = any(p in path for p in SECRET_PATHS)
    record: dict[str, Any] = {
        "kind": "http",
        "method": method,
        "path": path,
        "params": redact_mapping(params),
        "json": redact_mapping(json_body),
        "headers": redact_mapping(headers or {}),
        "error": error,
    }
    if result is not None:
        record.update(
            status=result.status,
            response_headers=redact_mapping(result.headers),
            body=REDACTED if secret_answer else result.body.decode("utf-8", "replace"),
            duration=round(result.duration, 6),
        )
    return record


@dataclass
class HttpTransport:
    """requests.Session with keep-alive against one base URL."""

    base_url: str
    timeout: float = 30.0
    verify: bool | str = True  # True: the system's CAs; a path: a CA bundle (file or directory)
    cert: str | tuple[str, str] | None = None  # x509 client certificate: "cert.pem" or ("cert.pem", "key.pem")
    _session: requests.Session | None = field(default=None, repr=False)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: object = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> HttpResult:
        if self._session is None:
            self._session = requests.Session()
        url = self.base_url.rstrip("/") + "/" + path.lstrip("/")
        start = time.monotonic()
        try:
            resp = self._session.request(
                method,
                url,
                params=params,
                json=json,
                data=data,
                headers=headers,
                timeout=timeout or self.timeout,
                verify=self.verify,
                cert=self.cert,
            )
            result = HttpResult(resp.status_code, dict(resp.headers), resp.content, time.monotonic() - start)
            log.debug("%s %s -> %d in %.3fs", method, path, resp.status_code, result.duration)
            return result
        except requests.RequestException as exc:
            raise TransportError(f"{method} {url} got no answer: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
