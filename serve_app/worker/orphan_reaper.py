"""Kill a replica's engine processes if the replica dies without shutting them down.

vLLM's EngineCore processes do not watch their parent: when a worker replica is killed
(`ray.kill`, OOM, `ray stop --force`) its `__del__` never runs and the engine keeps its
cores and memory forever. The worker therefore starts this watcher in its own session; it
polls the replica's pid and, once it is gone, kills the engine process trees, then exits.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil

POLL_S = 1.0


def start_reaper(owner_pid: int, child_pids: list[int]) -> subprocess.Popen:
    """Watch `owner_pid`; when it exits, kill `child_pids` and their descendants."""
    return subprocess.Popen(
        [sys.executable, "-m", "serve_app.worker.orphan_reaper", str(owner_pid), *map(str, child_pids)],
        start_new_session=True,  # survives a kill of the replica's process group
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _tree(pids: list[int]) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs.extend([proc, *proc.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return procs


def watch(owner_pid: int, child_pids: list[int]) -> None:
    """Block until the owner exits (then kill the children) or all children have exited."""
    try:
        owner = psutil.Process(owner_pid)
    except psutil.NoSuchProcess:
        owner = None
    while owner is not None and owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE:
        if not any(psutil.pid_exists(pid) for pid in child_pids):
            return  # the engine was shut down normally
        time.sleep(POLL_S)
    procs = _tree(child_pids)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("owner_pid", type=int)
    parser.add_argument("child_pids", type=int, nargs="+")
    args = parser.parse_args()
    watch(args.owner_pid, args.child_pids)


if __name__ == "__main__":
    main()
