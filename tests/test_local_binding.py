"""Local mode listens on loopback only: Serve's HTTP proxy on 127.0.0.1 and the Ray dashboard off
or on 127.0.0.1. Static checks of every place the project starts Ray or Serve, plus a look at
the sockets of the test session's own cluster (tests/conftest.py, started the same way)."""

from __future__ import annotations

import ast
import shlex
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import HTTP_PORT

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("serve_app", "placement", "predictors", "examples")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _calls(name: str) -> list[tuple[str, ast.Call]]:
    """Every `<module>.<function>(...)` call, e.g. `ray.init`, in the package sources."""
    module, function = name.split(".")
    found = []
    for path in sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == function
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == module):
                found.append((f"{path.relative_to(REPO)}:{node.lineno}", node))
    return found


def _keyword(call: ast.Call, name: str, key: str | None = None) -> object:
    """A keyword argument's literal value, or (with `key`) that entry of a dict display; None if
    absent, `...` if not a literal (a host must be visible in the source to pass)."""
    value = next((k.value for k in call.keywords if k.arg == name), None)
    if key is not None and isinstance(value, ast.Dict):
        value = next((v for k, v in zip(value.keys, value.values)
                      if isinstance(k, ast.Constant) and k.value == key), None)
    try:
        return None if value is None else ast.literal_eval(value)
    except ValueError:
        return ...


def test_every_local_ray_start_has_no_dashboard_or_a_loopback_one():
    starts = [(where, c) for where, c in _calls("ray.init") if _keyword(c, "address") in (None, "local")]
    assert starts, "expected the demo's ray.init"
    for where, call in starts:
        assert _keyword(call, "include_dashboard") is False or _keyword(call, "dashboard_host") in LOOPBACK, where


def test_every_serve_start_binds_the_proxy_to_loopback():
    starts = _calls("serve.start")
    assert starts, "expected the demo's serve.start"
    for where, call in starts:
        assert _keyword(call, "http_options", "host") in LOOPBACK, where


def test_local_serve_config_binds_loopback_and_the_cluster_dashboard_stays_local():
    local = yaml.safe_load((REPO / "examples" / "serve_local_cpu.yaml").read_text())
    assert local["http_options"]["host"] == "127.0.0.1"
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    heads = [shlex.split(c.split(";")[-1]) for c in cluster["head_start_ray_commands"] if "--head" in c]
    assert heads
    for argv in heads:  # `ray start`'s default is loopback too; an explicit host must be one
        hosts = [a.split("=", 1)[1] for a in argv if a.startswith("--dashboard-host=")]
        assert "--dashboard-host" not in argv and all(h in LOOPBACK for h in hosts), argv


def _session_listeners() -> list[tuple[psutil.Process, str, int]]:
    """(process, ip, port) of every listening socket of this test process's Ray descendants
    (other Ray clusters on the machine are not ours to check)."""
    procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
    return [(procs[c.pid], c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in procs]


@pytest.mark.serving
def test_session_cluster_proxy_and_dashboard_listen_on_loopback_only(ray_cluster):
    from ray._private.ray_constants import DEFAULT_DASHBOARD_PORT

    deadline = time.monotonic() + 60
    while not (proxy := [ip for _, ip, port in _session_listeners() if port == HTTP_PORT]):
        assert time.monotonic() < deadline, f"nothing of ours listens on port {HTTP_PORT}"
        time.sleep(1)
    assert set(proxy) == {"127.0.0.1"}, proxy

    listeners = _session_listeners()
    dashboard_ports = {DEFAULT_DASHBOARD_PORT}
    for proc in {proc for proc, _, _ in listeners}:
        argv = proc.cmdline()
        if any(a.endswith("dashboard/dashboard.py") for a in argv):  # a dashboard head, if any runs
            args = dict(a.removeprefix("--").split("=", 1) for a in argv if a.startswith("--") and "=" in a)
            assert args["host"] in LOOPBACK, args
            dashboard_ports.add(int(args["port"]))
    exposed = [(ip, port) for _, ip, port in listeners if port in dashboard_ports and ip not in LOOPBACK]
    assert not exposed, exposed
