"""Every child process magscope starts: started, watched and stopped one way.

The camera's acquisition process, the tracking workers, Redis, the queueserver's RE
manager, bluesky's 0MQ proxy and the embedded Tiled server are all started with
:func:`spawn`, which gives each of them three properties:

* **Its own session.** A child never receives the terminal's signals: Ctrl-C in
  ``magscope ipython`` reaches the RunEngine (which pauses) and nothing else.
* **Its life tied to its parent's.** However the parent dies (``kill -9`` included),
  every child is gone within a few seconds. Programs we do not write (Redis, the RE
  manager, Tiled) run under :mod:`magscope_ipc.lifeline`, a tiny launcher that
  watches the parent and ends the program's whole process group; our own Python
  children (camera, tracking workers) watch their parent themselves with
  :func:`exit_with_parent`.
* **An owner tag.** ``MAGSCOPE_OWNER=<pid>-<start time>`` in the child's environment
  names the process that started it, so :func:`find_orphans` recognises the children of
  an owner that is gone (``magscope cleanup`` ends them).

:meth:`ChildProcess.stop` stops a child: a polite signal, then SIGKILL after a timeout.
:func:`port_holder` names the process listening on an address, for the error a service
gives when its address is taken.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from .shm import owner_token, token_owner_alive

#: Environment variable naming a child's owner: its ``<pid>-<start time>`` token, the one
#: that names its shared-memory segments (:func:`magscope_ipc.shm.owner_token`).
ENV_OWNER = "MAGSCOPE_OWNER"
#: Seconds the lifeline launcher waits between SIGTERM and SIGKILL of a program's group.
DEFAULT_GRACE_S = 3.0
_LIFELINE = Path(__file__).with_name("lifeline.py")


class ChildStartError(RuntimeError):
    """A child process exited or did not become ready in time."""


class ChildProcess:
    """One child process started by :func:`spawn`.

    :param name: what the child is, for messages ("Redis", "camera process").
    :param popen: the started process (the lifeline launcher when ``lifeline`` is True).
    :param lifeline: the process runs under :mod:`magscope_ipc.lifeline`.
    :param log_path: file receiving the child's stdout and stderr, if any.
    """

    def __init__(
        self, name: str, popen: subprocess.Popen, *, lifeline: bool, log_path: Path | None,
        log_file: IO[bytes] | None, grace_s: float,
    ) -> None:
        self.name = name
        self.process = popen
        self.lifeline = lifeline
        self.log_path = log_path
        self._log_file = log_file
        self.grace_s = grace_s

    @property
    def pid(self) -> int:
        """Pid of the child (of the launcher, which is also the process-group id)."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        """True while the child runs."""
        return self.process.poll() is None

    def program_pid(self) -> int | None:
        """Pid of the program itself: under the lifeline launcher, the launcher's child
        (None until it has started or once it is gone); otherwise :attr:`pid`."""
        if not self.lifeline:
            return self.pid
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return None
        return children[0].pid if children else None

    def group_pids(self) -> list[int]:
        """Pids of the live processes in the child's process group (it and its helpers)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if os.getpgid(proc.pid) == self.pid and proc.status() != "zombie":
                    found.append(proc.pid)
        return found

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the child's log ("" without a log)."""
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready()`` until it is true. If the child exits first, or ``timeout`` (s)
        passes, stop it and raise :class:`ChildStartError` with the log's tail."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                code = self.process.returncode
                self.stop()
                raise ChildStartError(
                    f"{self.name} exited ({describe_exit(code)}) before it could {what}"
                    + (f"; log {self.log_path}:\n{self.log_tail()}" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ChildStartError(
                    f"{self.name} did not {what} within {timeout:g} s"
                    + (f"; log {self.log_path}:\n{self.log_tail()}" if self.log_path else "")
                )
            time.sleep(0.05)

    def stop(self, timeout: float | None = None, first_signal: int = signal.SIGTERM) -> None:
        """Stop the child: ``first_signal``, then SIGKILL (to its whole process group)
        after ``timeout`` s (default: the grace period plus 2 s). Idempotent."""
        timeout = self.grace_s + 2.0 if timeout is None else float(timeout)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(first_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5.0)
        # helpers the child left in its group (a launcher killed by SIGKILL, say)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else describe_exit(self.process.returncode)
        return f"<ChildProcess {self.name} pid {self.pid} {state}>"


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    lifeline: bool = True,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    stdin_data: bytes | None = None,
    cwd: Path | None = None,
    umask: int = 0o077,
    grace_s: float = DEFAULT_GRACE_S,
    user: int | None = None,
    group: int | None = None,
) -> ChildProcess:
    """Start ``argv`` as a child of this process (see the module docstring).

    :param name: what the child is, for messages.
    :param argv: the program and its arguments.
    :param lifeline: run it under the lifeline launcher (any program); False for our own
        Python children, which must call :func:`exit_with_parent` themselves.
    :param env: its environment (default: this process's), plus the owner tag.
    :param log: append its stdout and stderr to this file (created owner-only); default:
        they go where this process's go.
    :param stdin_data: bytes written to its stdin, which is then closed.
    :param cwd: its working directory.
    :param umask: its file-creation mask; the default keeps its files owner-only.
    :param grace_s: seconds between SIGTERM and SIGKILL when the launcher ends the group.
    :param user: / :param group: run it as this uid / gid (root only: a server that refuses
        to run as root), without this process's supplementary groups.
    """
    child_env = dict(os.environ if env is None else env)
    child_env[ENV_OWNER] = owner_token()
    log_file: IO[bytes] | None = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log_file = os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    command = list(argv)
    as_user: dict = {} if user is None else {"user": user, "group": group, "extra_groups": []}
    if lifeline:
        switch = [] if user is None else ["--user", f"{user}:{group}"]
        command = [
            sys.executable, "-I", "-S", str(_LIFELINE), str(os.getpid()), f"{grace_s:g}",
            *switch, "--", *command,
        ]
        as_user = {}  # the launcher stays this user; it starts the program as the other
    try:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=log_file, stderr=subprocess.STDOUT if log_file is not None else None,
            env=child_env, cwd=cwd, start_new_session=True, umask=umask,
            **as_user,
        )
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise
    if stdin_data is not None:
        assert popen.stdin is not None
        try:
            popen.stdin.write(stdin_data)
            popen.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; wait_until / poll report how
    return ChildProcess(
        name, popen, lifeline=lifeline, log_path=log, log_file=log_file, grace_s=grace_s
    )


def exit_with_parent(
    parent_pid: int, poll_s: float = 0.2, grace_s: float = 0.0
) -> threading.Thread:
    """In a child: end this process (``os._exit``) once ``parent_pid`` is no longer its
    parent (the owner died, however), ``grace_s`` seconds after noticing (time for a main
    loop that watches too to close its files). Runs in a daemon thread, so it works while
    the main thread is busy (importing, compiling kernels); returns that thread."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        time.sleep(grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="magscope-exit-with-parent", daemon=True)
    thread.start()
    return thread


def describe_exit(code: int | None) -> str:
    """'running', 'exit code 2' or 'killed by SIGKILL' for a Popen return code."""
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code > 128 and code - 128 in {s.value for s in signal.Signals}:
        return f"exit code {code} (killed by {signal.Signals(code - 128).name})"
    return f"exit code {code}"


# -- who holds what ---------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessInfo:
    """A process as a user needs it named in a message."""

    pid: int | None
    command: str
    user: str

    def __str__(self) -> str:
        if self.pid is None:
            return "a process this user cannot see (another user's)"
        return f"pid {self.pid} ({self.command}, user {self.user})"


def describe_process(pid: int) -> ProcessInfo:
    """Pid, command line (shortened) and user of process ``pid``."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cmd = " ".join(proc.cmdline()) or proc.name()
            user = proc.username()
    except psutil.Error:
        return ProcessInfo(pid, "gone", "?")
    if len(cmd) > 160:
        cmd = cmd[:157] + "..."
    return ProcessInfo(pid, cmd, user)


def port_holder(host: str, port: int) -> ProcessInfo | None:
    """The process listening on TCP ``host:port`` (or on all interfaces at ``port``),
    None if nothing listens there."""
    wildcard = {"0.0.0.0", "::", host}
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        connections = []
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.laddr.ip in wildcard:
                return describe_process(conn.pid) if conn.pid else ProcessInfo(None, "", "")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        if sock.connect_ex((host, port)) == 0:  # someone listens that psutil cannot see
            return ProcessInfo(None, "", "")
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class AddressInUseError(RuntimeError):
    """A service cannot start: another process listens on its address."""


def require_free_port(service: str, host: str, port: int, *, option: str = "") -> None:
    """Raise :class:`AddressInUseError` naming the holder and how to stop it, unless
    nothing listens on ``host:port``. ``option`` names the flag that picks another port."""
    holder = port_holder(host, port)
    if holder is None:
        return
    how = (
        f"stop it (`kill {holder.pid}`; `magscope cleanup` ends orphans of earlier sessions)"
        if holder.pid is not None
        else "stop it"
    )
    alternative = f", or choose another address with {option}" if option else ""
    raise AddressInUseError(
        f"{service} cannot start: {host}:{port} is already taken by {holder}. Use that "
        f"service if it is yours, {how}{alternative}."
    )


# -- orphans ------------------------------------------------------------------------------
#: Command-line fragments of the programs magscope starts, to find orphans of versions
#: that did not yet tag their children.
_OUR_PROGRAMS = (
    "magscope_devices.acquisition",  # the camera module before it was made private
    "magscope_devices._acquisition",
    "magscope_tracking._worker",
    "magscope_ipc/lifeline.py",
    "bluesky.commandline.zmq_proxy",
    "start-re-manager",
    "tiled-config.yml",
)


def find_orphans() -> list[psutil.Process]:
    """This user's processes that magscope started for an owner that is gone: tagged
    with a dead owner, or one of our programs adopted by init."""
    me = psutil.Process()
    user = me.username()
    tags: dict[str, bool] = {}
    found = []
    for proc in psutil.process_iter(["pid", "username", "cmdline", "ppid"]):
        if proc.pid == me.pid or proc.info["username"] != user:
            continue
        try:
            tag = proc.environ().get(ENV_OWNER)
        except psutil.Error:
            continue
        if tag is not None:
            if tag not in tags:
                tags[tag] = token_owner_alive(tag)
            if not tags[tag]:
                found.append(proc)
            continue
        cmd = " ".join(proc.info["cmdline"] or ())
        if proc.info["ppid"] == 1 and any(p in cmd for p in _OUR_PROGRAMS):
            found.append(proc)
    return found


def end_processes(procs: Sequence[psutil.Process], timeout: float = 5.0) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL after ``timeout`` s; returns the processes that ended."""
    def ended(proc: psutil.Process) -> bool:  # gone, or dead and not yet reaped
        try:
            return proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def wait(group: list[psutil.Process]) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while not all(ended(p) for p in group) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [p for p in group if not ended(p)]

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = wait(list(procs))
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    left = wait(alive)
    return [p for p in procs if p not in left]
