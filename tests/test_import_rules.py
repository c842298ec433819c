"""The layers hold: the pure packages (placement/, predictors/) import neither Ray, vLLM nor
the Serve application, and predictors/ nothing of placement/, so the simulator, the planner and
the models run anywhere and the server and the simulator share them (docs/architecture.md).
vLLM is allowed in one place: the engine profiler, the entry point that measures a real engine.
The runtime never imports the tooling: the Serve runtime runs without serve_app/tools, and
placement's core and planning without the simulator and the evaluation code. The Serve
runtime's `sim` engine is the one runtime module that runs the simulator's engine model (the
same model the simulator runs, so a dry run and a simulation agree)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PURE = ("placement", "predictors")
FORBIDDEN = {"ray", "vllm", "serve_app"}
# path -> top-level modules it may import from FORBIDDEN, and why
ALLOWED = {"predictors/latency/engine_profiler.py": {"vllm"}}  # profiles a real vLLM engine

# package -> (its tooling folders, the tooling modules the rest of the package must not import)
TOOLING = {
    "serve_app": (("serve_app/tools",), ("serve_app.tools",)),
    "placement": (("placement/evaluation", "placement/simulator"), ("placement.evaluation", "placement.simulator")),
}
# runtime module -> tooling modules of another package it may import, and why
RUNTIME_ALLOWED = {
    # the sim engine emits tokens on the schedule of the simulator's own engine model
    "serve_app/worker/sim_engine.py": {"placement.simulator.worker_engine", "placement.simulator.metrics"},
}
# package -> packages it must not import (the lower layer never imports the one above it)
LOWER_LAYERS = {"predictors": ("placement", "serve_app"), "placement": ("serve_app",)}


def _package_of(rel: str) -> str:
    """The dotted package a module file belongs to (the package itself for __init__.py)."""
    parts = rel[: -len(".py")].split("/")
    return ".".join(parts[:-1])


def imported_modules(source: str, rel: str = "") -> list[tuple[int, str]]:
    """(line, dotted module) of every import in `source`, nested ones included. Relative imports
    are resolved against `rel` (the file's repository path), and `from M import N` also yields
    M.N, since N may be a module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(rel).split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module:
                found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if a.name != "*"]
    return found


def _sources(package: str) -> list[tuple[str, str]]:
    paths = sorted((REPO / package).rglob("*.py"))
    assert paths, f"no sources under {package}/: the rule would pass on nothing"
    return [(p.relative_to(REPO).as_posix(), p.read_text()) for p in paths]


def _under(module: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_finder_sees_top_level_nested_and_relative_imports() -> None:
    source = "import ray.serve\nfrom vllm import LLM\ndef f():\n    from serve_app.config import AppConfig\n"
    assert [m for _, m in imported_modules(source)] == [
        "ray.serve", "vllm", "vllm.LLM", "serve_app.config", "serve_app.config.AppConfig"]
    found = imported_modules("from . import state\nfrom ..tools import cli\n", "serve_app/worker/worker.py")
    assert [m for _, m in found] == ["serve_app.worker.state", "serve_app.tools", "serve_app.tools.cli"]
    assert [m for _, m in imported_modules("from serve_app import tools\n")] == ["serve_app", "serve_app.tools"]


def test_pure_packages_import_no_ray_vllm_or_serve_app() -> None:
    bad, used = [], set()
    for package in PURE:
        for rel, source in _sources(package):
            for line, dotted in imported_modules(source, rel):
                module = dotted.split(".")[0]
                if module not in FORBIDDEN:
                    continue
                if module in ALLOWED.get(rel, set()):
                    used.add(rel)
                else:
                    bad.append(f"{rel}:{line} imports {dotted}")
    assert not bad, "\n".join(bad)
    assert used == set(ALLOWED), "an ALLOWED entry no longer matches anything: remove it"


def test_lower_layers_never_import_upper_ones() -> None:
    bad = []
    for package, upper in LOWER_LAYERS.items():
        for rel, source in _sources(package):
            bad += [f"{rel}:{line} imports {m}" for line, m in imported_modules(source, rel) if _under(m, upper)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(TOOLING))
def test_tooling_folders_exist(package: str) -> None:
    for folder in TOOLING[package][0]:
        assert (REPO / folder).is_dir() and any((REPO / folder).glob("*.py")), f"{folder}/ is gone: update TOOLING"


def test_runtime_and_core_never_import_tooling() -> None:
    tool_dirs = tuple(d + "/" for dirs, _ in TOOLING.values() for d in dirs)
    tool_modules = tuple(m for _, modules in TOOLING.values() for m in modules)
    bad, used = [], set()
    for package in TOOLING:
        for rel, source in _sources(package):
            if rel.startswith(tool_dirs):
                continue
            for line, module in imported_modules(source, rel):
                if not _under(module, tool_modules):
                    continue
                if _under(module, RUNTIME_ALLOWED.get(rel, set())):
                    used.add(rel)
                else:
                    bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)
    assert used == set(RUNTIME_ALLOWED), "a RUNTIME_ALLOWED entry no longer matches anything: remove it"
