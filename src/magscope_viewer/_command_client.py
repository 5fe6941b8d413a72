"""The viewer's side of the command channel (no Qt): send one allowlisted command to the
process that owns the instrument, get one line back.

Where to send is in the owner's discovery file
(:mod:`magscope_session._viewer_commands`): an IPython session's endpoint (0MQ, with a
token) or a queueserver's RE manager (its API, ``item_execute``). Every call returns
within about ``timeout_s``: an owner without a command channel, or one that does not
answer, gives a :class:`Reply` whose message starts with "no command channel".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import zmq

from magscope_session._viewer_commands import (
    CommandRefused,
    decode,
    done_message,
    encode_request,
    plan_call,
    plan_running_refusal,
    read_discovery,
)

__all__ = ["CommandClient", "Reply"]

#: Seconds a command may take before the viewer gives up waiting.
DEFAULT_TIMEOUT_S = 5.0
NO_CHANNEL = "no command channel"


@dataclass(frozen=True)
class Reply:
    """The owner's answer: ``ok``, the line to show, what the plan stub returned."""

    ok: bool
    message: str
    result: Any = None


class CommandClient:
    """Commands to the owner of instrument ``instance`` (see the module docstring)."""

    def __init__(self, instance: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.instance = instance
        self.timeout_s = float(timeout_s)
        self._context: zmq.Context | None = None

    def transport(self) -> str | None:
        """"zmq" (an IPython session), "queue" (a queueserver) or None (no channel)."""
        info = read_discovery(self.instance)
        return None if info is None else str(info.get("transport"))

    def send(self, command: str, args: dict[str, Any] | None = None) -> Reply:
        """Run ``command`` with ``args`` (named values) on the owner; never raises for a
        refusal, a failure or a silent owner: the reply says so."""
        try:
            call = plan_call(command, args)  # refuse bad values before sending anything
        except CommandRefused as err:
            return Reply(False, str(err))
        info = read_discovery(self.instance)
        if info is None:
            return Reply(False, (
                f"{NO_CHANNEL}: no session of instance {self.instance!r} accepts commands "
                "(start `magscope ipython` or `magscope qserver`)"
            ))
        if info.get("transport") == "queue":
            return self._send_queue(info, call)
        return self._send_zmq(info, command, call.kwargs)

    # -- IPython endpoint ---------------------------------------------------------------
    def _send_zmq(self, info: dict[str, Any], command: str, args: dict[str, Any]) -> Reply:
        if self._context is None:
            self._context = zmq.Context()
        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout_s * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_s * 1000))
        try:
            sock.connect(str(info["address"]))
            sock.send(encode_request(command, args, str(info.get("token", ""))))
            reply = decode(sock.recv())
        except zmq.Again:
            return Reply(False, f"{NO_CHANNEL}: the session did not answer in {self.timeout_s:g} s")
        except (zmq.ZMQError, ValueError, KeyError) as err:
            return Reply(False, f"{NO_CHANNEL}: {err}")
        finally:
            sock.close(linger=0)
        return Reply(bool(reply.get("ok")), str(reply.get("message", "")), reply.get("result"))

    # -- queueserver --------------------------------------------------------------------
    def _send_queue(self, info: dict[str, Any], call) -> Reply:
        from bluesky_queueserver_api.zmq import REManagerAPI

        api = REManagerAPI(
            zmq_control_addr=str(info["address"]), zmq_public_key=info.get("public_key"),
            timeout_recv=self.timeout_s, timeout_send=self.timeout_s,
        )
        try:
            status = api.status()
            if not status.get("worker_environment_exists"):
                return Reply(False, "refused: the queue's RE environment is closed (open it first)")
            if status.get("manager_state") != "idle":
                return Reply(False, plan_running_refusal(_running_plan(api)))
            item = {"item_type": "plan", "name": call.plan, "args": [call.device],
                    "kwargs": call.kwargs}
            try:
                api.item_execute(item)
            except Exception as err:  # noqa: BLE001 - RequestFailedError and kin
                text = str(err)
                if "busy" in text:
                    return Reply(False, plan_running_refusal(_running_plan(api)))
                return Reply(False, f"refused: {text.removeprefix('Request failed: ')}")
            uid = api.status().get("running_item_uid")
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                if api.status().get("manager_state") == "idle":
                    break
                time.sleep(0.05)
            else:
                return Reply(True, f"{call.plan} sent to the queue; still running")
            return _queue_result(api, call, uid)
        except Exception as err:  # noqa: BLE001 - timeouts, a manager that went away
            return Reply(False, f"{NO_CHANNEL}: the queue did not answer ({type(err).__name__}: {err})")
        finally:
            api.close()

    def close(self) -> None:
        if self._context is not None:
            self._context.term()
            self._context = None


def _running_plan(api) -> str | None:
    try:
        running = api.queue_get().get("running_item") or {}
    except Exception:  # noqa: BLE001 - the name is a nicety
        return None
    return running.get("name")


def _queue_result(api, call, uid: str | None) -> Reply:
    items = api.history_get().get("items") or []
    item = next((i for i in reversed(items) if uid is None or i.get("item_uid") == uid), None)
    result = (item or {}).get("result") or {}
    if result.get("exit_status") == "completed":
        return Reply(True, done_message(call, result.get("return_value")), result.get("return_value"))
    # the worker reports "Plan failed: <the exception>" (a refusal names the value)
    lines = [line for line in str(result.get("msg", "")).splitlines() if line.strip()]
    why = lines[-1].strip().removeprefix("Plan failed: ") if lines else (
        f"exit status {result.get('exit_status')!r}"
    )
    return Reply(False, f"refused: {why}")
