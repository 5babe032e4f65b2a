"""bodies.py on its own: the capped reader (chunks, gzip by header or magic, several members) and parse_json."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from harvester_edge.central.bodies import BodyTooLarge, Disconnected, parse_json, read_body
from harvester_edge.central.errors import InvalidInput


def read(
    chunks: list[bytes], limit: int = 1000, sniff: bool = False, disconnect: bool = False, **headers: str
) -> bytes:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})
    pulled = []

    async def receive() -> dict:
        pulled.append(1)
        return messages.pop(0)

    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return asyncio.run(read_body(receive, raw, limit, sniff))


def test_plain_chunks_are_joined_and_counted():
    assert read([b"ab", b"cd", b""]) == b"abcd"
    with pytest.raises(BodyTooLarge):
        read([b"x" * 600, b"x" * 600])
    with pytest.raises(BodyTooLarge):  # announced too large: refused before the first receive
        read([], content_length="1001")
    with pytest.raises(Disconnected):
        read([b"ab"], disconnect=True)


def test_gzip_by_header_by_magic_and_in_several_members():
    doc = b'{"a": 1}' * 10
    packed = gzip.compress(doc)
    assert read([packed[:3], packed[3:]], content_encoding="gzip") == doc
    assert read([packed[:1], packed[1:5], packed[5:]], sniff=True) == doc  # magic split across chunks
    assert read([packed], sniff=False) == packed  # no header, no sniffing: left as it is
    assert read([packed + gzip.compress(b"more")], content_encoding="gzip") == doc + b"more"
    with pytest.raises(InvalidInput, match="truncated"):
        read([packed[:-6]], content_encoding="gzip")
    with pytest.raises(InvalidInput, match="not valid gzip"):
        read([b"not gzip at all"], content_encoding="gzip")


def test_inflated_size_has_the_same_cap():
    bomb = gzip.compress(bytes(10_000_000))
    with pytest.raises(BodyTooLarge, match="inflates"):
        read([bomb], limit=100_000, content_encoding="gzip")
    with pytest.raises(BodyTooLarge, match="inflates"):
        read([bomb], limit=100_000, sniff=True)
    assert len(read([gzip.compress(bytes(100_000))], limit=100_000, sniff=True)) == 100_000  # exactly the cap


def test_parse_json_refuses_depth_surrogates_and_bad_text():
    assert parse_json("[" * 32 + "]" * 32) is not None
    for text in ("[" * 33 + "]" * 33, "[" * 100_000, '"\\ud800"', b'"\xed\xa0\x80"', "{", "NaN", "\ud800"):
        with pytest.raises(InvalidInput):
            parse_json(text)
