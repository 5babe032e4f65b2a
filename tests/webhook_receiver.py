"""A real HTTP receiver for alert webhooks: a thread HTTP server on 127.0.0.1 that keeps every POST it gets.

`Receiver()` listens on a free port; `url(path)` is a webhook URL to it; `messages` the JSON bodies taken (with
`paths` beside them); `fail_next(n, status)` answers the next n requests with `status` (a webhook that is down);
`wait(n)` waits until n messages were taken. Tests use it as a context manager (or call close()).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.refused = 0  # requests answered with an error status
        self._fail: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = receiver._fail.pop(0) if receiver._fail else 200
                    if status == 200:
                        receiver.messages.append(json.loads(body))
                        receiver.paths.append(self.path)
                    else:
                        receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"down")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._fail.extend([status] * n)

    def taken(self, **match: Any) -> list[dict[str, Any]]:
        """The messages taken whose fields equal `match` (e.g. alert="queue_paused", state="firing")."""
        with self._lock:
            return [m for m in self.messages if all(m.get(k) == v for k, v in match.items())]

    def wait(self, n: int, timeout: float = 30.0, **match: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.taken(**match)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(self.taken(**match))} of {n} messages {match} after {timeout}s: {self.messages}"
                )
            time.sleep(0.05)
        return self.taken(**match)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
