"""The map stays true: the README's code layout and ARCHITECTURE.md name the packages the
tree has, no module grows past 400 lines, and the layering contracts hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "sylphx"
MAX_LINES = 400


def _packages() -> set[str]:
    """Every package under src/sylphx, as a path relative to it ("_server/http")."""
    return {
        str(init.parent.relative_to(PKG))
        for init in PKG.rglob("__init__.py")
        if "migrations" not in init.parts and init.parent != PKG
    }


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Code layout", 1)[1]
    return section.split("```", 2)[1]


def _named(block: str) -> set[str]:
    """The folders a layout block names, with their parents' names prefixed."""
    named: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = re.match(r"^( *)([\w./]+?)/\s", line + " ")
        if not match:
            continue
        depth, name = len(match[1]), match[2]
        while stack and stack[-1][0] >= depth:
            stack.pop()
        stack.append((depth, name))
        named.add("/".join(n for _, n in stack))
    return {n.removeprefix("src/sylphx/") for n in named if n.startswith("src/sylphx/")}


def test_the_readme_layout_names_every_package_and_no_other() -> None:
    block = _layout_block()
    named = _named(block)
    assert named <= _packages(), named - _packages()  # no folder that is not there
    for package in _packages() - named:  # a sub-package named in its parent's line
        parent, _, leaf = package.rpartition("/")
        assert parent in named and f"{leaf}/" in block, package


def test_architecture_names_every_top_level_part() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for package in _packages():
        if package.count("/") <= 1:  # _core, _server/http, ...
            assert package.split("/")[-1] + "/" in text, package


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(PKG)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_layering_contracts_hold() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:]
