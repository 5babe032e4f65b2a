"""Docstrings and comments point only to files that exist in the repository.

Every .py in harvester_edge, plugins and jumbo is scanned for path-like references: a path under one of the
repository's top folders (scripts/, tests/, configs/, docs/, harvester_edge/, plugins/, jumbo/, .ci/; globs allowed)
must exist from the repository root; a source or document name (`*.py`, `*.md`, with or without folders) must name a
file somewhere in the repository (`central/guard.py`, `README.md`). Upstream files are written with their package
path (pandaserver/..., pandaharvester/..., pilot/... of pilot3) and are not looked for here. File names the
appliance reads or writes at run time (jobReport.json, worker.sh) are not repository references and are not checked.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("harvester_edge", "plugins", "jumbo")
TOP = (".ci", "scripts", "tests", "configs", "docs", "harvester_edge", "plugins", "jumbo")
UPSTREAM = ("pandaserver/", "pandaharvester/", "pandajedi/", "pandacommon/", "pilot/")
REFERENCE = re.compile(
    r"(?<![\w/.$~{}<-])("
    rf"(?:{'|'.join(re.escape(t) for t in TOP)})/[\w./*-]*\w"  # a path under a top folder
    r"|[\w-]+(?:/[\w.-]+)*\.(?:py|md)"  # a source file or a document
    r")(?![\w/])"
)


def texts(source: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every docstring and comment of a module."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None and node.body:
                yield node.body[0].lineno, doc
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def references(source: str) -> Iterator[tuple[int, str]]:
    for line, text in texts(source):
        for match in REFERENCE.finditer(text):
            ref = match.group(1)
            if not ref.startswith(UPSTREAM):
                yield line, ref


def repository_files() -> list[str]:
    """Every file and folder of the checkout, relative to its root (not .git, caches, nor the plugins symlink)."""
    out = []
    for folder, dirs, names in os.walk(ROOT):  # does not follow symlinks: harvester_edge/plugins -> ../plugins
        dirs[:] = [d for d in dirs if d != ".git" and not d.endswith("cache") and d != "__pycache__"]
        rel = Path(folder).relative_to(ROOT)
        out += [(rel / name).as_posix() for name in [*names, *dirs]]
    return out


def exists(ref: str, files: list[str]) -> bool:
    if ref.split("/", 1)[0] in TOP:
        return any(Path(f).match(ref) for f in files) if "*" in ref else ref in files
    return any(f == ref or f.endswith("/" + ref) for f in files)


def sources() -> list[Path]:
    return sorted(
        p
        for top in SCANNED
        for p in (ROOT / top).rglob("*.py")
        if "plugins" not in p.relative_to(ROOT).parts[1:2]  # harvester_edge/plugins -> ../plugins
    )


def missing(files: list[str]) -> list[str]:
    out = []
    for path in sources():
        for line, ref in references(path.read_text()):
            if not exists(ref, files):
                out.append(f"{path.relative_to(ROOT)}:{line}: {ref}")
    return out


def test_docstrings_and_comments_point_to_files_that_exist():
    files = repository_files()
    assert sources() and "harvester_edge/cli.py" in files and "README.md" in files
    assert missing(files) == []


def test_the_scan_finds_references_and_tells_missing_ones():
    source = '''"""See scripts/bench/simulate, tests/replay/traces/*.jsonl.gz, central/guard.py and README.md; the pilot
writes jobReport.json; upstream pandaserver/taskbuffer/JobSpec.py; scripts/no-such-script."""
# configs/nowhere.yaml and gone.py
def f():
    """Formats: <access point>/outputs/<PandaID>/, $HOME/x.py, {a,b}_api.py: not references."""
'''
    found = [ref for _, ref in references(source)]
    assert found == [
        "scripts/bench/simulate",
        "tests/replay/traces/*.jsonl.gz",
        "central/guard.py",
        "README.md",
        "scripts/no-such-script",
        "configs/nowhere.yaml",
        "gone.py",
    ]
    files = repository_files()
    assert [ref for ref in found if not exists(ref, files)] == [
        "scripts/no-such-script",
        "configs/nowhere.yaml",
        "gone.py",
    ]
