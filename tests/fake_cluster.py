"""A Ray cluster with the real cluster autoscaler over fake nodes, on this one machine.

Ray's `fake_multinode` node provider "launches" a node by starting another raylet (with the
node type's logical resources, e.g. `GPU: 1`) as a child of the autoscaler process; nothing
touches a real accelerator. `ray.cluster_utils.AutoscalingCluster` does the same but needs a file
the pip wheel lacks and runs `ray stop --force`, which kills every Ray process on the machine
(another test session's cluster included). This helper instead starts the head with its own
temp dir and ports, and tears down only the processes of that cluster: those whose command line
names its temp dir, and all their descendants (Ray workers rename themselves `ray::...`, so
they are found as children of their raylet).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

HEAD_NODE_TYPE = "ray.head.default"  # the name the fake provider tags its head node with


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def cluster_config(
    node_types: dict[str, dict[str, Any]],
    head_resources: dict[str, float],
    idle_timeout_minutes: float,
    gcs_address: str,
    max_workers: int,
) -> dict[str, Any]:
    """A fake_multinode cluster config (the keys of Ray's fake_multi_node/example.yaml)."""
    types = {HEAD_NODE_TYPE: {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}}
    for name, spec in node_types.items():
        types[name] = {"node_config": {}, **spec}
    return {
        "cluster_name": "fake_multinode",
        "max_workers": max_workers,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,  # else a launch of N nodes starts one
            # where fake nodes join (the provider's default is <ip>:6379)
            "gcs_address": gcs_address,
        },
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "auth": {"ssh_user": "ubuntu"},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@dataclass
class FakeCluster:
    """A running fake-node autoscaling cluster (see the module docstring)."""

    temp_dir: Path
    address: str | None = None  # GCS address, for ray.init(address=...)
    config_path: Path | None = None
    log: list[str] = field(default_factory=list)

    # ---- inspection ------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: command line names the temp dir, or a
        descendant of one that does."""
        marker = str(self.temp_dir)
        roots: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = proc.info["cmdline"] or []
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if proc.pid != os.getpid() and any(arg.endswith(marker) or marker + "/" in arg for arg in cmdline):
                roots[proc.pid] = proc
        found = dict(roots)
        for proc in roots.values():
            try:
                for child in proc.children(recursive=True):
                    if child.pid != os.getpid():
                        found[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        return [p for p in found.values() if _alive(p)]

    def logs_dir(self) -> Path | None:
        sessions = sorted(self.temp_dir.glob("session_2*"))
        return sessions[-1] / "logs" if sessions else None

    def monitor_log_tail(self, lines: int = 60) -> str:
        """The end of the autoscaler's log (for failure messages)."""
        logs = self.logs_dir()
        if logs is None:
            return "(no session dir)"
        out = []
        for name in ("monitor.log", "monitor.err", "monitor.out"):
            path = logs / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out) or "(no monitor logs)"

    # ---- teardown --------------------------------------------------------------------------
    def kill(self, grace_s: float = 10.0) -> None:
        """Terminate this cluster's processes (SIGTERM, then SIGKILL after `grace_s`) and check
        none is left. Never touches another cluster's processes."""
        procs = self.processes()
        for proc in procs:
            _signal(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        # processes may have been started meanwhile (e.g. a node launch in flight): sweep again
        for _ in range(5):
            alive = [p for p in {p.pid: p for p in alive + self.processes()}.values() if _alive(p)]
            if not alive:
                break
            for proc in alive:
                _signal(proc, signal.SIGKILL)
            _, alive = psutil.wait_procs(alive, timeout=5)
        left = self.processes()
        if left:
            raise RuntimeError(f"fake cluster processes survived: {[(p.pid, _cmd(p)) for p in left]}")


def start_fake_cluster(
    node_types: dict[str, dict[str, Any]],
    head_resources: dict[str, float],
    idle_timeout_minutes: float = 0.5,
    max_workers: int = 4,
    env: dict[str, str] | None = None,
    temp_dir: Path | None = None,
) -> FakeCluster:
    """Start the head (`ray start --head` with the autoscaler on the fake provider) with a
    private temp dir (`temp_dir`, or a new one from `make_temp_dir`) and free ports.
    `head_resources` must hold CPU (and may hold GPU)."""
    temp_dir = Path(temp_dir) if temp_dir is not None else make_temp_dir()
    import ray._private.services

    ip = ray._private.services.get_node_ip_address()
    port = free_port()
    address = f"{ip}:{port}"
    config = cluster_config(node_types, head_resources, idle_timeout_minutes, address, max_workers)
    config_path = temp_dir / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    resources = dict(head_resources)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_bin, "start", "--head",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        f"--autoscaling-config={config_path}",
        f"--num-cpus={resources.pop('CPU')}",
        f"--num-gpus={resources.pop('GPU', 0)}",
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        # defaults that another Ray on this machine may hold
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--disable-usage-stats",
    ]
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    run_env = {
        **os.environ,
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        # Ray turns token auth on when ~/.ray/auth_token exists, while ray.init(address=...)
        # does not: a private test cluster goes without
        "RAY_AUTH_MODE": "disabled",
        **(env or {}),
    }
    run_env.pop("RAY_ADDRESS", None)
    cluster = FakeCluster(temp_dir=temp_dir, address=address, config_path=config_path)
    try:
        out = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=180)
    except BaseException:
        cluster.kill()
        raise
    cluster.log.append(out.stdout + out.stderr)
    if out.returncode != 0:
        cluster.kill()
        raise RuntimeError(f"ray start failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return cluster


def make_temp_dir() -> Path:
    """A fresh, short temp dir for a cluster (Unix socket paths under it must stay short, so
    not pytest's tmp_path); it is also how the cluster's processes are recognised."""
    return Path(tempfile.mkdtemp(prefix="rayfake-", dir="/tmp"))


def remove_temp_dir(cluster: FakeCluster) -> None:
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:200]
    except psutil.Error:
        return "?"
