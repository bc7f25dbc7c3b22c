"""The library's layers, checked on its import graph so that they stay true.

Each subpackage of :mod:`commonsync` sits on a floor and may import only from floors below
its own (and from itself): a format never knows about the network, the wire never about
folders, the sync engine never about how peers are found. Nothing imports in a cycle, and
the library never imports the daemon. The floors are described in README.md ("Using the
library") and in each subpackage's docstring.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"commonsync": ROOT / "commonsync", "commonsyncd": ROOT / "daemon" / "commonsyncd"}

#: The library's floors, lowest first. Subpackages on one floor do not import each other.
FLOORS: list[set[str]] = [
    {"commonsync.errors"},
    {"commonsync.formats"},
    {"commonsync.wire", "commonsync.membership"},
    {"commonsync.relay", "commonsync.sync"},
    {"commonsync.node"},
    {"commonsync"},  # the package itself: the public API, re-exported from every floor
]


def modules() -> dict[str, Path]:
    """Every module of the library and of the daemon, by dotted name."""
    found = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """The modules of ours that ``name`` imports (anywhere: in functions, and for type
    checking only too, since those are dependencies all the same), with the line."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] in PACKAGES:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.partition(".")[0] in PACKAGES:
                source = node.module
            else:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield (submodule if submodule in known else source), node.lineno


def floor_of(module: str) -> tuple[int, str] | None:
    """The floor and the subpackage of a library module (None for the daemon's)."""
    for level, members in enumerate(FLOORS):
        for member in sorted(members, key=len, reverse=True):
            if module == member or (member != "commonsync" and module.startswith(member + ".")):
                return level, member
    return None


def upward_imports(known: dict[str, Path]) -> list[str]:
    wrong = []
    for name, path in known.items():
        mine = floor_of(name)
        if mine is None:
            continue
        for target, line in imports(name, path, known):
            theirs = floor_of(target)
            where = f"{path.name}:{line}: {name} imports {target}"
            if theirs is None:
                wrong.append(f"{where} (the library may not import the daemon)")
            elif theirs[0] > mine[0] or (theirs[0] == mine[0] and theirs[1] != mine[1]):
                wrong.append(f"{where} (floor {theirs[0]} from floor {mine[0]})")
    return wrong


def cycles(known: dict[str, Path]) -> list[list[str]]:
    graph = {
        name: {t for t, _ in imports(name, path, known) if t != name}
        for name, path in known.items()
    }
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            # A package's __init__ re-exporting its own modules is not a cycle of theirs.
            if node == target.rpartition(".")[0] and known[node].name == "__init__.py":
                continue
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state and target in graph:
                visit(target)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return found


def test_no_module_imports_from_a_higher_floor() -> None:
    assert upward_imports(modules()) == []


def test_no_module_imports_in_a_cycle() -> None:
    assert cycles(modules()) == []


def test_every_library_module_is_on_a_floor() -> None:
    unplaced = [
        name
        for name in modules()
        if name.startswith("commonsync.") and floor_of(name) == (len(FLOORS) - 1, "commonsync")
    ]
    assert unplaced == [], "a module of the library outside every layer: put it in a subpackage"


def test_every_package_is_installed() -> None:
    """A subpackage missing from pyproject.toml works in a checkout and is absent from a
    wheel."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    # Directories of package data alone (the systemd units) are listed too, so that
    # setuptools ships them without warning; they hold no Python.
    data_only = {name for name in listed - packages if not any(_directory(name).glob("*.py"))}
    assert all(any(_directory(name).iterdir()) for name in data_only)
    assert packages == listed - data_only


def _directory(package: str) -> Path:
    top, *rest = package.split(".")
    return PACKAGES[top].joinpath(*rest)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: a format importing the sync engine is caught."""
    known = modules()
    bad = tmp_path / "records.py"
    bad.write_text(known["commonsync.formats.records"].read_text() + "\nfrom ..sync import store\n")
    known["commonsync.formats.records"] = bad
    assert any("commonsync.sync.store" in line for line in upward_imports(known))
    with pytest.raises(AssertionError):
        assert upward_imports(known) == []
