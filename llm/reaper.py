"""Engine processes die with the command that started them.

vLLM runs its engine (and workers) in child processes. When the command is SIGKILLed it cannot
stop them, and they used to live on, holding memory and a GPU. `watch()` starts a small watcher
in its own session: while the command lives it notes the command's descendants (every second,
from /proc via psutil); once the command is gone it stops those processes (SIGTERM, then SIGKILL),
after checking each is still the process it noted (same start time), and exits.

    python -m xtallm.llm.reaper PID     (what `watch` runs)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 1.0
GRACE_S = 5.0


def watch(pid: int | None = None) -> subprocess.Popen | None:
    """Start the watcher for `pid` (default: this process); None where psutil is missing."""
    try:
        import psutil  # noqa: F401  (vLLM depends on it; without it there is nothing to watch with)
    except ImportError:
        return None
    return subprocess.Popen([sys.executable, "-m", "xtallm.llm.reaper", str(pid or os.getpid())], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _reap(noted: dict[int, float]) -> None:
    import psutil

    alive = []
    for pid, created in noted.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:  # not a new process that reused the number
                proc.terminate()
                alive.append(proc)
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            pass


def main(pid: int) -> int:
    import psutil

    try:
        parent = psutil.Process(pid)
        started = parent.create_time()
    except psutil.Error:
        return 0
    noted: dict[int, float] = {}
    while True:
        try:
            if not parent.is_running() or parent.create_time() != started or parent.status() == psutil.STATUS_ZOMBIE:
                break
            noted = {c.pid: c.create_time() for c in parent.children(recursive=True) if c.pid != os.getpid()}
        except psutil.Error:
            break
        time.sleep(POLL_S)
    _reap(noted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1])))
