"""``magscope qserver``: the queueserver with everything it needs, on default addresses.

Starts (or reuses) the Tiled server, bluesky's 0MQ proxy and a Redis server, then the RE
manager with the startup profile; runs until Ctrl-C (or SIGTERM) and then stops what it
started. The RE worker it opens loads ``profile/startup`` with ``MAGSCOPE_TILED_URI``
pointing at the server, so runs from the queue land where runs from IPython do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .services import (
    DEFAULT_PROXY_IN,
    DEFAULT_PROXY_OUT,
    DEFAULT_REDIS_ADDR,
    DEFAULT_ZMQ_CONTROL,
    ManagedProcess,
    check_redis,
    port_open,
    start_proxy,
    start_re_manager,
    start_redis,
)
from .tiled_server import (
    ENV_DATA_DIR,
    ENV_TILED_API_KEY,
    ENV_TILED_URI,
    TiledUnreachableError,
    resolve_tiled,
    unreachable_target,
)

__all__ = ["ensure_proxy", "list_plans_and_devices", "run_qserver"]


def ensure_proxy(log_dir: Path) -> ManagedProcess | None:
    """Start bluesky's 0MQ proxy on the default ports unless one already listens there;
    returns the process we started (None if one was running)."""
    if port_open(DEFAULT_PROXY_OUT):
        return None
    return start_proxy(DEFAULT_PROXY_IN, DEFAULT_PROXY_OUT, log=log_dir / "proxy.log")


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
    started: list[ManagedProcess] = []
    target = None
    try:
        if redis_addr is not None:
            check_redis(redis_addr)  # the user's Redis: refuse early, with the fix
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
        if (proxy := ensure_proxy(logs)) is not None:
            started.append(proxy)
        print(f"Document proxy: in {DEFAULT_PROXY_IN}, out {DEFAULT_PROXY_OUT}", flush=True)
        if redis_addr is None:
            redis_addr = DEFAULT_REDIS_ADDR
            if port_open(redis_addr):
                check_redis(redis_addr)
                print(f"Redis: reusing the server at {redis_addr}", flush=True)
            else:
                started.append(start_redis(redis_addr, data_dir=target.data_dir / "redis"))
                print(f"Redis: started at {redis_addr}", flush=True)
        env = dict(os.environ)
        env[ENV_TILED_URI] = target.uri
        env[ENV_TILED_API_KEY] = target.api_key or ""
        env[ENV_DATA_DIR] = str(target.data_dir)
        manager = start_re_manager(profile, redis_addr=redis_addr, log=logs / "re-manager.log", env=env)
        started.append(manager)
        print(
            f"RE manager: {DEFAULT_ZMQ_CONTROL} (REManagerAPI() reaches it); log "
            f"{manager.log_path}. Ctrl-C stops it all.", flush=True,
        )
        watch = WorkerWatch(manager.pid)
        stop = _StopFlag()
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while manager.alive() and not stop.requested:
            time.sleep(0.5)
            if not stop.requested and (report := watch.check()) is not None:
                print(report, flush=True)
        if stop.requested:
            return 0
        print(f"The RE manager exited (code {manager.process.returncode}):\n{manager.log_tail()}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C while the services were starting
        return 0
    finally:
        if started and started[-1].name == "RE manager" and started[-1].alive():
            close_environment()
            wait_for_worker_exit(started[-1].pid)
        for proc in reversed(started):
            proc.stop()
        if target is not None:
            target.close()


def close_environment(timeout: float = 60.0) -> None:
    """Close the RE worker environment (the worker closes the microscope: processes
    stopped, shared memory freed) before the manager is stopped."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    api = REManagerAPI(zmq_control_addr=DEFAULT_ZMQ_CONTROL, timeout_recv=5.0)
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
    again. (bluesky-queueserver 0.0.25 does not notice a dead worker by itself.)"""

    _BUSY = {"creating_environment", "closing_environment", "destroying_environment"}

    def __init__(self, manager_pid: int) -> None:
        self.manager_pid = manager_pid
        self._suspect = 0

    def check(self) -> str | None:
        from bluesky_queueserver_api.zmq import REManagerAPI

        api = REManagerAPI(zmq_control_addr=DEFAULT_ZMQ_CONTROL, timeout_recv=2.0)
        try:
            status = api.status()
            dead = (
                status.get("worker_environment_exists")
                and status.get("manager_state") not in self._BUSY
                and len(child_pids(self.manager_pid)) < 2  # only the manager is left
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
    """Pids of the live children of ``pid`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def wait_for_worker_exit(manager_pid: int, timeout: float = 30.0) -> bool:
    """After the environment is closed, wait until the RE worker process has finished its
    exit (closing the microscope frees the shared memory); the watchdog process then has
    only the manager as a child. True if it did within ``timeout`` (s)."""
    deadline = time.monotonic() + timeout
    while len(child_pids(manager_pid)) > 1:
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
