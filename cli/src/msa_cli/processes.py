"""Finding and killing processes by what they carry, not by who their parent is: a run's leftovers after its
supervisor is gone. Linux (/proc) where it says so."""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["alive", "kill_group", "processes_carrying"]


def processes_carrying(name: str, value: str) -> list[int]:
    """Live processes (not this one) whose environment has name=value: what a run started, however it was
    started and whoever its parent is now. Linux only (/proc)."""
    marker = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if marker in environ.split(b"\0") and alive(pid):
            found.append(pid)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers signal 0 until its parent reaps it; for us it is gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def kill_group(pid: int) -> None:
    # supervisord makes every program a process-group leader; a leftover may have children of its own.
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
