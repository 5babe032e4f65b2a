"""What the wheel ships: every package of the checkout, py.typed, and plugins/ as harvester_edge.plugins."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def packages_on_disk() -> set[str]:
    """Each directory with an __init__.py under harvester_edge/, jumbo/ and plugins/, by its installed name."""
    found = set()
    for top, name in (("harvester_edge", "harvester_edge"), ("jumbo", "jumbo"), ("plugins", "harvester_edge.plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            if init.parent.name == "__pycache__" or (top == "harvester_edge" and "plugins" in init.parts):
                continue  # harvester_edge/plugins: a worktree's symlink to plugins/, counted from plugins/
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_is_listed():
    listed = set(setuptools_config()["packages"])
    missing = packages_on_disk() - listed
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}: the wheel would too"


def test_plugins_installed_as_harvester_edge_plugins():
    config = setuptools_config()
    assert config["package-dir"]["harvester_edge.plugins"] == "plugins"
    assert "templates/*" in config["package-data"]["harvester_edge.plugins"]


def test_py_typed_shipped():
    assert (ROOT / "harvester_edge" / "py.typed").is_file()
    assert "py.typed" in setuptools_config()["package-data"]["harvester_edge"]
