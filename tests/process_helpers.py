"""Helpers for tests that start processes, give them ports and watch them end."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from magscope_ipc.processes import ChildProcess, spawn


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_pid_exit(pid: int, timeout: float = 10.0) -> bool:
    """True once process ``pid`` is gone (within ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def start_service(
    name: str, argv: list[str], folder: Path, *, env: dict[str, str] | None = None,
    ready: Callable[[], bool] | None = None, timeout: float = 30.0, cwd: Path | None = None,
) -> ChildProcess:
    """A test's stand-in for a lab's device (an IOC, a controller, a device server) as a
    process of its own, started as magscope starts its children (:func:`spawn`: its own
    session, gone with this process however it ends), its output in ``folder/NAME.log``.
    Returns once ``ready()`` is true, or, by default, once the log has a line "ready"."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    child = spawn(name, argv, lifeline=True, env=env, log=log, cwd=cwd)

    def printed_ready() -> bool:
        return log.exists() and "ready" in log.read_text(errors="replace").split()

    child.wait_until(ready or printed_ready, timeout, "start")
    return child


def kill_service(child: ChildProcess) -> None:
    """End ``child`` as a crash would: SIGKILL, no clean-up of its own."""
    child.stop(timeout=5.0, first_signal=signal.SIGKILL)
