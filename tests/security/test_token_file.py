"""The client's token file is read on every call (an external tool renews it): a regular file of at most 64 KiB,
never a FIFO that would block the daemon or a huge file read into memory."""

from __future__ import annotations

import os
import time

import pytest

from harvester_edge.central.client import TOKEN_CAP, CentralClient, CentralUnavailable, TokenUnreadable


def client(path) -> CentralClient:
    return CentralClient(transport=None, token_file=path)  # type: ignore[arg-type]


def test_a_token_file_is_read_stripped_and_a_missing_one_falls_back_to_the_token_held(tmp_path):
    path = tmp_path / "token"
    c = client(path)
    c.set_token("held")
    assert c.token_in_use() == ("client", "held")
    path.write_text("abc.def.ghi\n")
    assert c.token_in_use() == (str(path), "abc.def.ghi") and c.current_token() == "abc.def.ghi"


@pytest.mark.parametrize("kind", ["fifo", "directory", "huge"])
def test_a_token_file_that_is_no_token_is_refused_at_once_with_its_name(tmp_path, kind):
    path = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a plain open() would block forever
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"x" * (TOKEN_CAP + 1))
    start = time.monotonic()
    with pytest.raises(TokenUnreadable) as err:
        client(path).current_token()
    assert time.monotonic() - start < 2 and str(path) in str(err.value)
    assert isinstance(err.value, CentralUnavailable)  # the call is not made; agents retry next cycle
