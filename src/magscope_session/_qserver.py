"""``magscope qserver``: the queueserver with everything it needs, on default addresses.

Starts (or reuses) the Tiled server, bluesky's 0MQ proxy and a Redis server, then the RE
manager with the startup profile; runs until Ctrl-C (or SIGTERM) and then stops what it
started. The RE worker it opens loads the profile's ``startup/`` files with
``MAGSCOPE_TILED_URI`` pointing at the server, so runs from the queue land where runs from IPython do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from magscope_ipc.processes import AddressInUseError, ChildProcess, port_holder

from ._services import (
    DEFAULT_PROXY_IN,
    DEFAULT_PROXY_OUT,
    DEFAULT_REDIS_ADDR,
    DEFAULT_ZMQ_CONTROL,
    DEFAULT_ZMQ_INFO,
    check_redis,
    qserver_keys,
    start_proxy,
    start_re_manager,
    start_redis,
)
from ._tiled_server import (
    ENV_DATA_DIR,
    ENV_TILED_API_KEY,
    ENV_TILED_URI,
    TiledUnreachableError,
    resolve_tiled,
    unreachable_target,
)
from ._viewer_commands import remove_discovery, write_discovery

__all__ = ["ensure_proxy", "list_plans_and_devices", "run_qserver"]

#: Environment variable REManagerAPI reads the control socket's public key from.
ENV_QSERVER_PUBLIC_KEY = "QSERVER_ZMQ_PUBLIC_KEY"
ENV_PROXY_IN = "MAGSCOPE_PROXY_IN"
ENV_PROXY_OUT = "MAGSCOPE_PROXY_OUT"


def ensure_proxy(log_dir: Path) -> tuple[ChildProcess | None, str]:
    """bluesky's 0MQ proxy for a session: start it unless one already listens there.
    Addresses: ``$MAGSCOPE_PROXY_IN`` and ``$MAGSCOPE_PROXY_OUT`` (``host:port``; the
    profile publishes to the first), by default 127.0.0.1:5577 and :5578. Returns the
    process we started (None if one ran) and a line saying which proxy the session
    publishes to."""
    in_addr = os.environ.get(ENV_PROXY_IN, DEFAULT_PROXY_IN)
    out_addr = os.environ.get(ENV_PROXY_OUT, DEFAULT_PROXY_OUT)
    host, port = out_addr.rsplit(":", 1)
    if (holder := port_holder(host, int(port))) is not None:
        return None, f"Document proxy: publishing to the one already at {in_addr} ({holder})"
    proc = start_proxy(in_addr, out_addr, log=log_dir / "proxy.log")
    return proc, f"Document proxy: started at {in_addr} (viewers read {out_addr})"


def _check_addresses(redis_addr: str | None) -> None:
    """Refuse to start when an address the stack needs is taken, naming the process, so
    nothing of another session is reused or disturbed."""
    needed = [("the 0MQ document proxy", DEFAULT_PROXY_IN), ("the 0MQ document proxy", DEFAULT_PROXY_OUT),
              ("the RE manager", DEFAULT_ZMQ_CONTROL), ("the RE manager", DEFAULT_ZMQ_INFO)]
    if redis_addr is None:
        needed.append(("Redis", DEFAULT_REDIS_ADDR))
    for service, addr in needed:
        host, port = addr.removeprefix("tcp://").rsplit(":", 1)
        holder = port_holder(host, int(port))
        if holder is not None:
            stop = f"`kill {holder.pid}`" if holder.pid is not None else "its owner"
            raise AddressInUseError(
                f"{addr}, where {service} of this queueserver must listen, is taken by "
                f"{holder}. Another queueserver (or an orphan of one) runs: use it, or stop "
                f"it with Ctrl-C in its terminal, {stop}, or `magscope cleanup`."
            )


class _StopFlag:
    """Set by SIGINT/SIGTERM; the main loop sees it between checks, so a signal never
    lands inside a call to the manager (which could leave its client hanging)."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:  # pragma: no cover - signal handler
        self.requested = True


def run_qserver(
    profile: Path, data_dir: str | None, *, port: int, redis_addr: str | None = None
) -> int:
    """Run the queueserver stack in the foreground (see the module docstring)."""
    started: list[ChildProcess] = []
    target = None
    public_key = None
    commands_file = None
    try:
        if redis_addr is not None:
            check_redis(redis_addr)  # the user's Redis: refuse early, with the fix
        _check_addresses(redis_addr)
        try:
            target = resolve_tiled(data_dir, port=port)
            print(f"Tiled: {target.uri} ({target.source})", flush=True)
        except TiledUnreachableError as err:  # runs are spooled until it answers
            target = unreachable_target(data_dir)
            print(
                f"WARNING: {err}\nThe queue runs anyway: runs are spooled in "
                f"{target.spool_dir}; send them with `magscope tiled replay` once "
                f"{target.uri} answers.", flush=True,
            )
        logs = target.data_dir / "qserver-logs"
        started.append(start_proxy(DEFAULT_PROXY_IN, DEFAULT_PROXY_OUT, log=logs / "proxy.log"))
        print(f"Document proxy: in {DEFAULT_PROXY_IN}, out {DEFAULT_PROXY_OUT}", flush=True)
        if redis_addr is None:
            redis_addr = DEFAULT_REDIS_ADDR
            started.append(start_redis(redis_addr, data_dir=target.data_dir / "redis"))
            print(f"Redis: started at {redis_addr}", flush=True)
        else:
            print(f"Redis: using yours at {redis_addr}", flush=True)
        keys = qserver_keys(target.data_dir)
        public_key = keys[0]
        env = dict(os.environ)
        env[ENV_TILED_URI] = target.uri
        env[ENV_TILED_API_KEY] = target.api_key or ""
        env[ENV_DATA_DIR] = str(target.data_dir)
        manager = start_re_manager(
            profile, redis_addr=redis_addr, log=logs / "re-manager.log", env=env, keys=keys
        )
        started.append(manager)
        commands_file = announce_queue_commands(public_key)
        print(
            f"RE manager: {DEFAULT_ZMQ_CONTROL}, control socket encrypted; clients need "
            f"its public key:\n  export {ENV_QSERVER_PUBLIC_KEY}={public_key}\n"
            f"(then REManagerAPI() reaches it; `magscope ipython` sets it for you). Log "
            f"{manager.log_path}. Ctrl-C stops it all.", flush=True,
        )
        watch = WorkerWatch(manager, public_key)
        stop = _StopFlag()
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while manager.alive() and not stop.requested:
            time.sleep(0.5)
            if not stop.requested and (report := watch.check()) is not None:
                print(report, flush=True)
        if stop.requested:
            return 0
        print(f"The RE manager exited (code {manager.returncode}):\n{manager.log_tail()}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the services were starting
        return 0
    finally:
        if commands_file is not None:
            remove_discovery(commands_file)
        if started and started[-1].name == "RE manager" and started[-1].alive():
            close_environment(public_key=public_key)
            wait_for_worker_exit(started[-1])
        for proc in reversed(started):
            proc.stop()
        if target is not None:
            target.close()


def announce_queue_commands(public_key: str | None) -> Path:
    """Tell viewers of this instance (``$MAGSCOPE_INSTANCE``, else "default") to send
    their commands through the RE manager (its control address and public key, in the
    discovery file of :mod:`magscope_session._viewer_commands`)."""
    from magscope_devices._ownership import instance_from_env

    return write_discovery(instance_from_env(), {
        "transport": "queue", "address": DEFAULT_ZMQ_CONTROL, "public_key": public_key,
    })


def close_environment(timeout: float = 60.0, *, public_key: str | None = None) -> None:
    """Close the RE worker environment (the worker closes the microscope: processes
    stopped, shared memory freed) before the manager is stopped."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    api = REManagerAPI(
        zmq_control_addr=DEFAULT_ZMQ_CONTROL, zmq_public_key=public_key, timeout_recv=5.0
    )
    try:
        status = api.status()
        if status.get("worker_environment_exists"):
            if status.get("re_state") == "running":  # a plan runs: pause it now, abort it
                api.re_pause(option="immediate")
                api.wait_for_idle_or_paused(timeout=timeout)
            if api.status().get("re_state") == "paused":
                api.re_abort()  # the plan's cleanup leaves the instrument safe
                api.wait_for_idle(timeout=timeout)
            api.environment_close()
            api.wait_for_idle(timeout=timeout)
    except Exception as err:  # the manager may be wedged: stopping it still frees things
        print(f"closing the RE environment failed ({err}); stopping the manager anyway")
    finally:
        api.close()


class WorkerWatch:
    """Notices an RE worker that died (crash, kill) while the manager believes its
    environment exists, and destroys that environment, so the manager reports it: the
    running plan is marked failed, the state is idle, and the environment can be opened
    again. (bluesky-queueserver 0.0.25 does not notice a dead worker by itself.)

    It only ever acts on the manager it started (:func:`start_re_manager` checked that
    the process answering at the control address belongs to it), and only while that
    manager runs.
    """

    _BUSY = {"creating_environment", "closing_environment", "destroying_environment"}

    def __init__(self, manager: ChildProcess, public_key: str | None = None) -> None:
        self.manager = manager
        self.public_key = public_key
        self._suspect = 0

    def check(self) -> str | None:
        from bluesky_queueserver_api.zmq import REManagerAPI

        if not self.manager.alive():
            return None
        api = REManagerAPI(
            zmq_control_addr=DEFAULT_ZMQ_CONTROL, zmq_public_key=self.public_key,
            timeout_recv=2.0,
        )
        try:
            status = api.status()
            watchdog = self.manager.program_pid()
            dead = (
                watchdog is not None
                and status.get("worker_environment_exists")
                and status.get("manager_state") not in self._BUSY
                and len(child_pids(watchdog)) < 2  # only the manager is left
            )
            self._suspect = self._suspect + 1 if dead else 0
            if self._suspect < 2:
                return None
            self._suspect = 0
            item = status.get("running_item_uid")
            api.environment_destroy()
            api.wait_for_idle(timeout=30)
            return (
                "The RE worker process died"
                + (f" while running item {item}" if item else "")
                + ": its environment was destroyed (the plan is marked failed). "
                "Open the environment again to go on."
            )
        except Exception:  # the manager is busy or restarting: look again later
            return None
        finally:
            api.close()


def child_pids(pid: int) -> list[int]:
    """Pids of the live (not zombie) children of ``pid``."""
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    alive = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child.pid)
        except psutil.Error:
            continue
    return alive


def wait_for_worker_exit(manager: ChildProcess, timeout: float = 30.0) -> bool:
    """After the environment is closed, wait until the RE worker process has finished its
    exit (closing the microscope frees the shared memory); the watchdog process then has
    only the manager as a child. True if it did within ``timeout`` (s)."""
    deadline = time.monotonic() + timeout
    while (watchdog := manager.program_pid()) is not None and len(child_pids(watchdog)) > 1:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def list_plans_and_devices(profile: Path, data_dir: str | None = None) -> Path:
    """Regenerate ``existing_plans_and_devices.yaml`` beside the startup files by loading
    the profile as the queueserver does (it starts the simulated microscope and Tiled)."""
    startup = profile / "startup"
    env = dict(os.environ, MAGSCOPE_TILED_PORT=os.environ.get("MAGSCOPE_TILED_PORT", "0"))
    if data_dir:
        env[ENV_DATA_DIR] = str(data_dir)
    tool = Path(sys.executable).with_name("qserver-list-plans-devices")
    subprocess.run(
        [str(tool), "--startup-dir", str(startup), "--file-dir", str(startup)],
        check=True, env=env,
    )
    return startup / "existing_plans_and_devices.yaml"
