"""One owner per instrument: a lock that the process driving an instrument holds.

On hardware, two processes driving the same camera and stages would fight over them, so
connecting a :class:`~magscope_devices._microscope.Microscope` takes the lock of its
instance name (``"default"`` in ``magscope ipython``, ``magscope demo`` and the
queueserver's worker, or what ``--instance NAME`` / ``MAGSCOPE_INSTANCE`` says). A second
owner is refused with :class:`InstrumentBusyError`, naming the process that holds it.

The lock is an ``flock`` on ``<runtime dir>/instrument-<instance>.lock``
(``$XDG_RUNTIME_DIR/magscope`` or ``<tmp>/magscope-<uid>``, mode 0700): the kernel
releases it when the owner exits, however it exits, so a crashed owner never leaves a
stale lock. The file records the owner's pid and command line, for the message.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
from pathlib import Path

from magscope_ipc.processes import describe_process

ENV_INSTANCE = "MAGSCOPE_INSTANCE"
DEFAULT_INSTANCE = "default"


class InstrumentBusyError(RuntimeError):
    """Another process owns the instrument."""


def runtime_dir() -> Path:
    """Folder of the instrument locks (created owner-only)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "magscope" if base else Path(tempfile.gettempdir()) / f"magscope-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def instance_from_env(default: str = DEFAULT_INSTANCE) -> str:
    """The instance name from ``$MAGSCOPE_INSTANCE`` (checked), else ``default``."""
    name = os.environ.get(ENV_INSTANCE) or default
    check_instance_name(name)
    return name


def check_instance_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is letters, digits, '_' and '-' (1-40)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        raise ValueError(
            f"instance name {name!r} must be 1 to 40 letters, digits, '_' or '-'"
        )


class InstrumentLock:
    """The ownership lock of instrument ``instance`` (see the module docstring).

    ``acquire()`` takes it or raises :class:`InstrumentBusyError`; ``release()`` gives it
    back (idempotent). Re-acquiring in the process that holds it is a no-op.
    """

    def __init__(self, instance: str) -> None:
        check_instance_name(instance)
        self.instance = instance
        self.path = runtime_dir() / f"instrument-{instance}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._owner_text(fd)
            os.close(fd)
            raise InstrumentBusyError(
                f"instrument {self.instance!r} is already driven by {owner}. Close that "
                f"session first, or start a separate simulated instrument with "
                f"`--instance NAME` (or {ENV_INSTANCE}=NAME)."
            ) from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "since": time.time()}
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    @staticmethod
    def _owner_text(fd: int) -> str:
        try:
            record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            pid = int(record["pid"])
        except (ValueError, KeyError, TypeError):
            return "another process"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
        return f"{describe_process(pid)}, since {since}"

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> InstrumentLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
