"""No request data or config text can reach code execution: the package sources never eval or
exec, unpickle, run a shell, load YAML with an unsafe loader, torch.load without weights_only
or trust a model's remote code. (Ray pickles between its own processes; that carries no user
input and is not in these sources.)"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("serve_app", "placement", "predictors", "examples")
# (path, finding) -> why it is acceptable there. Every entry must still match a finding.
ALLOWED: dict[tuple[str, str], str] = {}

UNPICKLERS = {"pickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
ALWAYS_UNSAFE = {"eval", "exec", "os.system", "os.popen", "yaml.unsafe_load", "yaml.full_load",
                 "asyncio.create_subprocess_shell"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader"}


def _name(node: ast.expr) -> str:
    """`a.b.c` for a name or attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[tuple[int, str]]:
    """(line, finding) for every unsafe pattern in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"import {m}") for m in modules if m.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.Call):
            name, kw = _name(node.func), {k.arg: k.value for k in node.keywords if k.arg}
            if name in ALWAYS_UNSAFE:
                found.append((node.lineno, name))
            if name == "yaml.load" and _name(kw.get("Loader", ast.Constant(None))).split(".")[-1] not in SAFE_YAML_LOADERS:
                found.append((node.lineno, "yaml.load without SafeLoader"))
            if name == "torch.load" and not _is_true(kw.get("weights_only")):
                found.append((node.lineno, "torch.load without weights_only=True"))
            found += [(node.lineno, f"{k}=True") for k in ("shell", "trust_remote_code", "allow_pickle")
                      if _is_true(kw.get(k))]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, "trust_remote_code=True") for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v)]
    return found


def test_package_sources_have_no_unsafe_calls():
    findings = {
        (str(path.relative_to(REPO)), what): line
        for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
        for line, what in unsafe_calls(path.read_text())
    }
    unexpected = [f"{path}:{line}: {what}" for (path, what), line in findings.items() if (path, what) not in ALLOWED]
    assert not unexpected, "unsafe calls (fix, or allowlist with a reason):\n" + "\n".join(unexpected)
    assert not set(ALLOWED) - set(findings), "stale ALLOWED entries"


def test_the_scan_catches_each_pattern_and_passes_safe_forms():
    unsafe = """
import pickle
from cloudpickle import loads
eval(text); exec(code); os.system(cmd); os.popen(cmd)
subprocess.run(cmd, shell=True)
yaml.load(text); yaml.load(text, Loader=yaml.Loader); yaml.unsafe_load(text); yaml.full_load(text)
torch.load(path); torch.load(path, weights_only=False); np.load(path, allow_pickle=True)
AutoTokenizer.from_pretrained(path, trust_remote_code=True)
AsyncEngineArgs(**{"model": path, "trust_remote_code": True})
"""
    assert sorted(what for _, what in unsafe_calls(unsafe)) == sorted([
        "import pickle", "import cloudpickle", "eval", "exec", "os.system", "os.popen", "shell=True",
        "yaml.load without SafeLoader", "yaml.load without SafeLoader", "yaml.unsafe_load", "yaml.full_load",
        "torch.load without weights_only=True", "torch.load without weights_only=True", "allow_pickle=True",
        "trust_remote_code=True", "trust_remote_code=True",
    ])
    safe = """
yaml.safe_load(text); yaml.load(text, Loader=yaml.SafeLoader); yaml.load(text, Loader=CSafeLoader)
subprocess.Popen([sys.executable, "-m", "serve_app.worker.orphan_reaper", str(pid)])
torch.load(path, weights_only=True); lgb.Booster(model_str=text); json.loads(text)
model.eval(); AutoTokenizer.from_pretrained(path, trust_remote_code=False)
"""
    assert unsafe_calls(safe) == []
