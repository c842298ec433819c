"""The layers hold: the pure packages (placement/, predictors/) import neither Ray, vLLM nor
the Serve application, so the simulator, the planner and the models run anywhere and the
server and the simulator share them (docs/architecture.md). vLLM is allowed in one place:
the engine profiler, the entry point that measures a real engine. Inside each package the
runtime never imports the tooling: the Serve runtime runs without serve_app/tools, and
placement's core and planning without the simulator and the evaluation code."""

from __future__ import annotations

import ast
from pathlib import Path

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


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in `source`, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_the_finder_sees_top_level_and_nested_imports() -> None:
    source = "import ray.serve\nfrom vllm import LLM\ndef f():\n    from serve_app.config import AppConfig\n"
    assert [m for _, m in imported_modules(source)] == ["ray.serve", "vllm", "serve_app.config"]
    assert imported_modules("from . import state\nimport numpy as np\n") == [(2, "numpy")]


def test_pure_packages_import_no_ray_vllm_or_serve_app() -> None:
    bad, used = [], set()
    for package in PURE:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for line, dotted in imported_modules(path.read_text()):
                module = dotted.split(".")[0]
                if module not in FORBIDDEN:
                    continue
                if module in ALLOWED.get(rel, set()):
                    used.add(rel)
                else:
                    bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)
    assert used == set(ALLOWED), "an ALLOWED entry no longer matches anything: remove it"


def test_runtime_and_core_never_import_tooling() -> None:
    bad = []
    for package, (tool_dirs, tool_modules) in TOOLING.items():
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(tuple(d + "/" for d in tool_dirs)):
                continue
            for line, module in imported_modules(path.read_text()):
                if module.startswith(tuple(t + "." for t in tool_modules)) or module in tool_modules:
                    bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)
