"""Helpers for tests that watch processes end."""

from __future__ import annotations

import os
import time


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
