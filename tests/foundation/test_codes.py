"""harvester_edge.codes: every code named once, with its meaning; the wire values are PanDA's plain numbers; no
bare code is left in the logic (checked on the tokens, so docstrings and messages may still quote numbers)."""

from __future__ import annotations

import io
import json
import tokenize
from pathlib import Path
from urllib.parse import urlencode

import pytest

from harvester_edge import codes
from harvester_edge.codes import DispatcherError, EventError, PilotError, StatusCode

REPO = Path(__file__).resolve().parents[2]  # resolved: harvester_edge/plugins links to plugins/
TABLES = [StatusCode, PilotError, DispatcherError, EventError]


def constants(table: type) -> dict[str, int]:
    return {k: v for k, v in vars(table).items() if k.isupper() and k != "MEANING"}


def test_panda_status_codes_keep_their_wire_values():
    # panda-server's Protocol.py: SC_Success 0 ... SC_ProxyError 90
    assert constants(StatusCode) == {
        "SUCCESS": 0,
        "TIMEOUT": 10,
        "NO_JOBS": 20,
        "FAILED": 30,
        "NON_SECURE": 40,
        "INVALID": 50,
        "ROLE": 60,
        "PERMISSION": 70,
        "MISSING_KEY": 80,
        "PROXY_ERROR": 90,
    }
    assert (PilotError.STAGEINFAILED, PilotError.STAGEOUTFAILED, PilotError.STAGEINTIMEOUT) == (1099, 1137, 1151)
    assert (DispatcherError.LOST_HEARTBEAT, EventError.NOT_PROCESSED) == (100, 60000)


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.__name__)
def test_every_code_is_a_plain_int_with_a_meaning_and_unique(table):
    values = constants(table)
    assert values and all(type(v) is int for v in values.values())
    assert len(set(values.values())) == len(values)
    assert set(table.MEANING) == set(values.values()) and all(table.MEANING.values())


def test_answers_encode_to_the_same_bytes():
    answer = {"StatusCode": StatusCode.NO_JOBS, "errorDialog": "No jobs"}
    assert json.dumps(answer) == '{"StatusCode": 20, "errorDialog": "No jobs"}'
    assert urlencode(answer) == "StatusCode=20&errorDialog=No+jobs"


def test_the_pilot_repeats_its_one_code():
    from jumbo.transform import DOWNLOAD_FAILED

    assert DOWNLOAD_FAILED == PilotError.TRFDOWNLOADFAILURE


def bare_codes(path: Path) -> list[str]:
    """Numbers used as codes outside strings: PanDA/our error codes, and `"StatusCode": <number>` literals."""
    known = {v for t in TABLES[1:] for v in constants(t).values() if v >= 1000}
    found = []
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NUMBER and tok.string.isdigit() and int(tok.string) in known:
            found.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.line.strip()}")
        if (
            tok.type == tokenize.STRING
            and tok.string.strip("'\"") == "StatusCode"
            and i + 2 < len(tokens)
            and tokens[i + 1].string in (":", "==", "!=")
            and tokens[i + 2].type == tokenize.NUMBER
        ):
            found.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.line.strip()}")
    return found


def test_no_bare_codes_in_the_logic():
    files = {f.resolve() for folder in ("harvester_edge", "plugins") for f in (REPO / folder).rglob("*.py")}
    found = [line for f in sorted(files - {Path(codes.__file__).resolve()}) for line in bare_codes(f)]
    assert found == []
