"""Request bodies under one cap: the only place the central service reads, inflates and parses a request body.

- A Content-Length over the cap is refused before a byte of the body is read (BodyTooLarge -> HTTP 413).
- A chunked body is counted while it streams in and cut at the cap.
- gzip (Content-Encoding: gzip, or the 1f 8b magic where `sniff_gzip`: pilot 3.11 gzips without the header)
  is inflated chunk by chunk with zlib's max_length against the SAME cap: a bomb costs at most `limit` bytes.
- JSON is parsed by orjson (no lone surrogates, no RecursionError) and its nesting depth is limited.

Used by FastPath (the hot /api/v1 writes) and by CappedBodies, the middleware in front of every other route.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from harvester_edge.codes import StatusCode

from .errors import CentralError, InvalidInput

DEFAULT_MAX_BODY = 16 * 1024 * 1024
MAX_DEPTH = 32  # PanDA bodies nest 3 deep (an object of lists of objects); 32 is generous
GZIP_MAGIC = b"\x1f\x8b"


class BodyTooLarge(CentralError):
    """The body, as sent or once inflated, is larger than central.max_body (HTTP 413)."""

    status_code = StatusCode.INVALID
    http_status = 413


class BodyTimeout(CentralError):
    """The client did not send its whole body within central.body_timeout (HTTP 408): a stalled upload would
    otherwise hold its connection for ever."""

    status_code = StatusCode.TIMEOUT
    http_status = 408


LINGER_SECONDS = 5.0  # after an answer sent before the whole body came: how long what still comes is read ...
LINGER_BYTES = 64 * 1024 * 1024  # ... and how much of it, at most, before the connection is closed anyway


class BodyReceiver:
    """The ASGI receive() of one request, noting whether the whole body has come (or the client left): an answer
    sent before that must close the connection, and should let the rest of the body in first (answer())."""

    def __init__(self, receive: Receive) -> None:
        self.inner = receive
        self.complete = False

    async def __call__(self) -> Message:
        msg = await self.inner()
        if msg["type"] == "http.disconnect" or not msg.get("more_body", False):
            self.complete = True
        return msg

    async def drain(self, seconds: float = LINGER_SECONDS, max_bytes: int = LINGER_BYTES) -> None:
        """Read and drop the rest of the body, bounded by time and size."""
        dropped = 0
        try:
            async with asyncio.timeout(seconds):
                while not self.complete and dropped <= max_bytes:
                    dropped += len((await self()).get("body", b""))
        except TimeoutError:
            pass


async def answer(
    send: Send, receive: BodyReceiver, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Send one answer. When it comes before the whole request body (a refused token, a body over the cap), the
    connection closes after it, and what the client still sends is read and dropped first (bounded: LINGER_SECONDS,
    LINGER_BYTES): a client that sends its whole body before it reads (requests, curl, the pilot) then sees this
    answer, where closing at once would reset the connection under it and lose the answer (a lingering close)."""
    unread = not receive.complete
    if unread:
        headers = [*headers, (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": unread})
    if unread:  # the answer is on its way already; the response ends (and the connection closes) after the drain
        await receive.drain()
        await send({"type": "http.response.body", "body": b""})


class Disconnected(Exception):
    """The client went away before its body was complete: nobody to answer."""


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def check_declared_length(headers: list[tuple[bytes, bytes]], limit: int) -> None:
    """Refuse a Content-Length over the cap before reading anything (a malformed one is left to the server)."""
    declared = header(headers, b"content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(
            f"request body of {int(declared)} bytes is larger than the limit of {limit} bytes (central.max_body)"
        )


def has_body(scope: Scope) -> bool:
    headers = scope["headers"]
    length = header(headers, b"content-length")
    return (
        header(headers, b"transfer-encoding") is not None
        or (length is not None and length.strip() != b"0")
        or scope["method"] in ("POST", "PUT", "PATCH")
    )


class Inflater:
    """Streaming gzip (several members allowed) whose output never exceeds limit + 1 bytes in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self._new_member()

    def _new_member(self) -> None:
        self.zobj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.fed = False

    def feed(self, data: bytes) -> None:
        while data:
            self.fed = True
            try:
                out = self.zobj.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise InvalidInput(f"body is not valid gzip: {exc}") from exc
            self.size += len(out)
            if self.size > self.limit:
                raise BodyTooLarge(
                    f"gzip body inflates to more than the limit of {self.limit} bytes (central.max_body)"
                )
            self.parts.append(out)
            if self.zobj.eof:  # the end of one member: what follows is the next member
                data = self.zobj.unused_data
                self._new_member()
            else:
                data = self.zobj.unconsumed_tail

    def result(self) -> bytes:
        if self.fed and not self.zobj.eof:
            raise InvalidInput("gzip body is truncated (the stream does not end)")
        return b"".join(self.parts)


async def read_body(
    receive: Receive,
    headers: list[tuple[bytes, bytes]],
    limit: int,
    sniff_gzip: bool = False,
    timeout: float | None = None,
) -> bytes:
    """The whole body, inflated when gzip: BodyTooLarge past `limit` (raw or inflated), BodyTimeout when it is not
    all there within `timeout` seconds, InvalidInput for bad gzip, Disconnected when the client left."""
    check_declared_length(headers, limit)
    try:
        async with asyncio.timeout(timeout):
            return await _read(receive, headers, limit, sniff_gzip)
    except TimeoutError as exc:
        raise BodyTimeout(f"request body not complete within {timeout:g}s (central.body_timeout)") from exc


async def _read(receive: Receive, headers: list[tuple[bytes, bytes]], limit: int, sniff_gzip: bool) -> bytes:
    encoding = (header(headers, b"content-encoding") or b"").strip().lower()
    inflater = Inflater(limit) if encoding == b"gzip" else None
    plain: list[bytes] = []
    raw = 0
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise Disconnected()
        chunk = msg.get("body", b"")
        more = msg.get("more_body", False)
        raw += len(chunk)
        if raw > limit:
            raise BodyTooLarge(f"request body is larger than the limit of {limit} bytes (central.max_body)")
        if inflater is not None:
            inflater.feed(chunk)
            continue
        plain.append(chunk)
        if sniff_gzip and (raw >= 2 or not more):  # decide once the magic can be seen
            sniff_gzip = False
            start = b"".join(plain)
            if start[:2] == GZIP_MAGIC:
                inflater, plain = Inflater(limit), []
                inflater.feed(start)
    return inflater.result() if inflater is not None else b"".join(plain)


def check_depth(doc: Any, max_depth: int = MAX_DEPTH) -> None:
    """InvalidInput when lists/objects nest deeper than max_depth (iterative, one level at a time: no recursion
    to exhaust, and one list comprehension per container: the 100 reports of a range update cost ~30 us)."""
    containers = (dict, list)
    level = [doc] if isinstance(doc, containers) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise InvalidInput(f"JSON nests deeper than {max_depth} levels")
        below: list = []
        for node in level:
            below += [v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, containers)]
        level = below


def parse_json(text: bytes | str, what: str = "body", max_depth: int = MAX_DEPTH) -> Any:
    """JSON of a request: orjson (valid UTF-8 only, so no lone surrogates; it stops by itself at 1024 levels, so
    no RecursionError), then the nesting depth at most max_depth."""
    if isinstance(text, str):
        try:
            text = text.encode()
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{what} is not valid UTF-8 text: {exc.reason}") from exc
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc
    check_depth(doc, max_depth)
    return doc
