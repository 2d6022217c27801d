"""The package shape: one namespace, dependencies one way, no cycles, a clinic free of the
coordinator. Read from the source (every import statement, also inside functions), so a new
import that breaks the shape fails here before anyone has to find it in review."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "privacy", "client", "server", "deploy", "cli")
# What each package may import (besides itself): the data path runs one way.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "privacy": {"schemas"},
    "client": {"schemas", "privacy"},
    "server": {"schemas", "privacy"},
    "deploy": {"schemas", "privacy", "client", "server"},
    "cli": {"schemas", "privacy", "client", "server", "deploy"},
}
GENERIC_NAMES = {*PACKAGES, "bench"}


def source_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return "oralfed." + ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def oralfed_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in source_files(*PACKAGES)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {
            target
            for target in imported_modules(path)
            if target in modules and target != name and not name.startswith(target + ".")
        }
    return graph


def package_of(module: str) -> str:
    return module.split(".")[1]


def test_nothing_imports_a_generic_top_level_name() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {target}"
        for path in source_files(*PACKAGES, "tests", "bench")
        for target in imported_modules(path)
        if target.split(".")[0] in GENERIC_NAMES - {"bench"}
        or (target.split(".")[0] == "bench" and not path.is_relative_to(ROOT / "bench"))
    ]
    assert offenders == []


def test_only_the_oralfed_namespace_is_installed() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(package.startswith("oralfed.") for package in setuptools["packages"])
    assert set(setuptools["package-dir"].values()) == set(PACKAGES)
    # every folder with code is listed, so an installed wheel is complete
    listed = {
        package.removeprefix("oralfed.").replace(".", "/") for package in setuptools["packages"]
    }
    folders = {
        str(path.parent.relative_to(ROOT))
        for path in source_files(*PACKAGES)
        if path.name == "__init__.py"
    }
    assert folders <= listed


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_run_one_way(package: str) -> None:
    graph = oralfed_graph()
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if package_of(module) == package
        for target in targets
        if package_of(target) != package and package_of(target) not in ALLOWED[package]
    )
    assert wrong == []


def test_there_are_no_import_cycles() -> None:
    graph = oralfed_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_clinic_process_loads_nothing_of_the_coordinator() -> None:
    """The ClientApp, the clinic's SuperNode supervisor and its warm runtime (the template
    and the task code), imported as a clinic does."""
    probe = (
        "import sys, oralfed.client.app, oralfed.deploy.supernode, "
        "oralfed.deploy.clinic_runtime, oralfed.deploy.clinic_task; "
        "print(sorted(m for m in sys.modules if m.startswith('oralfed.server')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    )
    assert loaded.stdout.strip() == "[]"
