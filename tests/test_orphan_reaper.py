import subprocess
import sys
import time

import psutil

from serve_app.worker.orphan_reaper import start_reaper


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def _gone(pid: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.2)
    return False


def test_children_and_grandchildren_die_when_the_owner_is_killed():
    owner = _spawn("import time; time.sleep(60)")
    child = _spawn(
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "time.sleep(60)"
    )
    time.sleep(1.0)
    grandchild = psutil.Process(child.pid).children()[0].pid
    reaper = start_reaper(owner.pid, [child.pid])
    time.sleep(1.5)
    assert psutil.pid_exists(child.pid)  # nothing happens while the owner lives
    owner.kill()
    owner.wait()
    assert _gone(child.pid) and _gone(grandchild)
    assert reaper.wait(timeout=15) == 0


def test_reaper_exits_when_children_end_normally():
    owner = _spawn("import time; time.sleep(60)")
    child = _spawn("import time; time.sleep(0.5)")
    reaper = start_reaper(owner.pid, [child.pid])
    child.wait()
    assert reaper.wait(timeout=15) == 0
    assert psutil.pid_exists(owner.pid)
    owner.kill()
