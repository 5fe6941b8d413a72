"""The command endpoint of an IPython session: the viewer's commands, run as plan stubs.

The profile starts one (``startup/40-viewer-commands.py``) beside the session's
RunEngine: a 0MQ REP socket on ``tcp://127.0.0.1:<free port>``, served by a daemon
thread, announced in the instance's discovery file with a random token
(:mod:`magscope_session._viewer_commands`). Each allowed command runs its plan stub on a
second RunEngine that shares the session RunEngine's event loop (so the devices see one
loop); the session's own RunEngine keeps the main thread and Ctrl-C.

While the session's RunEngine is not idle (a plan runs or is paused) every command is
refused ("refused: a plan is running (<plan name>)") and nothing changes; one command
runs at a time. A command that starts while the user starts a plan at the prompt may
overlap it by the few milliseconds a bead stub takes. The token is never logged.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from bluesky import RunEngine
from bluesky.utils import DuringTask

from ._viewer_commands import (
    CommandRefused,
    PlanCall,
    decode,
    done_message,
    encode_reply,
    new_token,
    plan_call,
    plan_running_refusal,
    remove_discovery,
    write_discovery,
)

__all__ = ["CommandServer", "start_command_server"]

#: Poll period of the serving thread (s): how soon :meth:`CommandServer.close` returns.
POLL_S = 0.1


class _OpenRuns:
    """Plan names of the runs the session's RunEngine has open (from its documents)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.names[doc["uid"]] = str(doc.get("plan_name") or "unnamed plan")
        elif name == "stop":
            self.names.pop(doc.get("run_start", ""), None)

    def current(self) -> str | None:
        return next(reversed(self.names.values()), None) if self.names else None


class CommandServer:
    """Serves the viewer's commands for ``microscope`` (see the module docstring).

    :param RE: the session's RunEngine (its state decides refusals; its loop runs the
        stubs).
    :param microscope: the :class:`~magscope_devices.Microscope` the stubs act on.
    :param instance: the instrument instance (names the discovery file).
    """

    def __init__(self, RE: RunEngine, microscope: Any, instance: str) -> None:
        self.RE = RE
        self.microscope = microscope
        self.instance = instance
        self.token = new_token()
        self._runs = _OpenRuns()
        self._subscription = RE.subscribe(self._runs)
        self._commands_RE = RunEngine(
            loop=RE.loop, context_managers=[], during_task=DuringTask(),
            call_returns_result=True,
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._serve, name=f"magscope-commands-{instance}", daemon=True
        )
        self.discovery_file: Path | None = None

    def start(self) -> CommandServer:
        """Serve, and announce the endpoint in the discovery file."""
        self._thread.start()
        self.discovery_file = write_discovery(
            self.instance, {"transport": "zmq", "address": self.address, "token": self.token}
        )
        return self

    def close(self) -> None:
        """Stop serving and remove the discovery file."""
        if self.discovery_file is not None:
            remove_discovery(self.discovery_file)
            self.discovery_file = None
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._socket.close(linger=0)
        self._context.term()
        try:
            self.RE.unsubscribe(self._subscription)
        except Exception:  # noqa: BLE001 - closing at exit: the RunEngine may be gone
            pass

    # -- serving ----------------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(int(POLL_S * 1000)):
                continue
            data = self._socket.recv()
            try:
                ok, message, result = self.handle(data)
            except Exception as err:  # noqa: BLE001 - the endpoint must answer, always
                ok, message, result = False, f"failed: {type(err).__name__}: {err}", None
            self._socket.send(encode_reply(ok, message, result))

    def handle(self, data: bytes) -> tuple[bool, str, Any]:
        """One request (wire bytes) -> (ok, message, result)."""
        try:
            request = decode(data)
        except ValueError:
            return False, "refused: not a JSON request", None
        token = request.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token, self.token):
            return False, "refused: wrong token", None
        try:
            call = plan_call(request.get("command"), request.get("args"))
        except CommandRefused as err:
            return False, str(err), None
        if not self._lock.acquire(blocking=False):
            return False, "refused: another command is running", None
        try:
            if self.RE.state != "idle":
                return False, plan_running_refusal(self._runs.current()), None
            return self._run(call)
        finally:
            self._lock.release()

    def _run(self, call: PlanCall) -> tuple[bool, str, Any]:
        from magscope_plans._arguments import refusal_line

        plan = _plan_stub(call.plan)
        device = self.microscope if call.device == "microscope" else self._device(call.device)
        try:
            outcome = self._commands_RE(plan(device, **call.kwargs))
            result = getattr(outcome, "plan_result", None)  # call_returns_result=True
        except Exception as err:  # noqa: BLE001 - a refusal or failure goes to the viewer
            line = refusal_line(err)
            if line is not None:
                return False, f"refused: {line}", None
            return False, f"failed: {type(err).__name__}: {err}", None
        return True, done_message(call, result), _jsonable(result)

    def _device(self, name: str) -> Any:
        device = self.microscope
        for part in name.split(".")[1:]:
            device = getattr(device, part)
        return device


def _plan_stub(name: str) -> Callable[..., Any]:
    import magscope_plans

    return getattr(magscope_plans, name)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def start_command_server(RE: RunEngine, microscope: Any, instance: str) -> CommandServer:
    """Start the command endpoint of ``instance`` (what the profile calls)."""
    return CommandServer(RE, microscope, instance).start()
