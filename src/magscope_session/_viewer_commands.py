"""The viewer's command channel: what it may ask, in which words, and where to ask it.

The viewer (another process) asks the process that owns the devices to change the
instrument through one allowlist: each command maps to a plan stub of
:mod:`magscope_plans` and its arguments, so a command acts exactly as the same stub in a
plan would (the stub checks the values again, and the instrument's limits)::

    add_bead      x_px, y_px                 -> add_bead(microscope.tracker, x_px, y_px)
    move_bead     bead_id, x_px, y_px        -> move_bead(microscope.tracker, ...)
    remove_beads  bead_ids                   -> remove_beads(microscope.tracker, bead_ids)
    auto_select   [max_beads]                -> auto_select_beads(microscope.tracker, ...)
    move_axes     [magnet_z_mm, magnet_turns, force_pn, focus_nm]
                                             -> move_axes(microscope, ...)
    lock_focus, unlock_focus, lock_xy, unlock_xy (no arguments)
                                             -> lock_focus(microscope) (the height now
                                                is the target), unlock_focus(...), ...

Pixels are sensor pixels (px), heights mm, rotation turns, force pN, focus nm.

Wire format (JSON, one request, one reply): ``{"command": NAME, "args": {...}, "token":
TOKEN}`` -> ``{"ok": bool, "message": str, "result": ...}``. A refused command changes
nothing and its message says why ("refused: a plan is running (count)", "refused:
add_bead: x_px=nan is not finite; ...").

Where: the owner writes a discovery file ``<runtime dir>/<instance>.commands.json``
(mode 0600, removed when it exits): ``{"transport": "zmq", "address": "tcp://...",
"token": ...}`` for the endpoint an IPython session starts
(:mod:`magscope_session._command_server`), or ``{"transport": "queue", "address":
<the RE manager's control address>, "public_key": ...}`` in a queueserver session.

No Qt, no Bluesky: the viewer imports this module.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magscope_devices._ownership import check_instance_name, runtime_dir

__all__ = [
    "COMMANDS",
    "CommandRefused",
    "PlanCall",
    "discovery_path",
    "done_message",
    "new_token",
    "plan_call",
    "plan_running_refusal",
    "read_discovery",
    "remove_discovery",
    "write_discovery",
]

#: Device arguments by name, as the queueserver takes them.
TRACKER = "microscope.tracker"
MICROSCOPE = "microscope"


class CommandRefused(ValueError):
    """A command outside the allowlist or with a bad value; its message is the line the
    viewer shows."""


@dataclass(frozen=True)
class Param:
    """One argument of a command: ``kind`` is ``"px"`` (finite number >= 0), ``"real"``
    (finite number), ``"bead_id"`` (whole number >= 0), ``"bead_ids"`` (a non-empty list
    of them), ``"count"`` (whole number >= 1) or ``"choice"`` (one of ``choices``)."""

    name: str
    kind: str
    required: bool = True
    units: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    """An allowed command: the plan stub it runs, its device argument (by name, passed
    first) and its arguments (passed by keyword)."""

    plan: str
    device: str
    params: tuple[Param, ...]


@dataclass(frozen=True)
class PlanCall:
    """What to run: ``plan(device, **kwargs)`` (``device`` by name)."""

    command: str
    plan: str
    device: str
    kwargs: dict[str, Any] = field(default_factory=dict)


COMMANDS: dict[str, Command] = {
    "add_bead": Command("add_bead", TRACKER, (
        Param("x_px", "px", units="px"), Param("y_px", "px", units="px"),
    )),
    "move_bead": Command("move_bead", TRACKER, (
        Param("bead_id", "bead_id"), Param("x_px", "px", units="px"),
        Param("y_px", "px", units="px"),
    )),
    "remove_beads": Command("remove_beads", TRACKER, (Param("bead_ids", "bead_ids"),)),
    "auto_select": Command("auto_select_beads", TRACKER, (
        Param("max_beads", "count", required=False),
    )),
    "move_axes": Command("move_axes", MICROSCOPE, (
        Param("magnet_z_mm", "real", required=False, units="mm"),
        Param("magnet_turns", "real", required=False, units="turns"),
        Param("force_pn", "real", required=False, units="pN"),
        Param("focus_nm", "real", required=False, units="nm"),
    )),
    "lock_focus": Command("lock_focus", MICROSCOPE, ()),
    "unlock_focus": Command("unlock_focus", MICROSCOPE, ()),
    "lock_xy": Command("lock_xy", MICROSCOPE, ()),
    "unlock_xy": Command("unlock_xy", MICROSCOPE, ()),
    "video_mode": Command("set_video_mode", MICROSCOPE, (
        Param("mode", "choice",
              choices=("tracks", "roi_crops", "frames_every_n", "trigger_window")),
        Param("every_n", "count", required=False, units="frames"),
    )),
}

#: What the viewer says when a lock command has run.
_LOCK_DONE = {
    "lock_focus": "focus lock on (holding the reference beads' height now)",
    "unlock_focus": "focus lock off",
    "lock_xy": "XY lock on",
    "unlock_xy": "XY lock off",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(command: str, p: Param, value: Any) -> Any:
    """``value`` checked as ``p`` says (JSON numbers: int or float), or CommandRefused."""

    def refuse(problem: str, expected: str) -> CommandRefused:
        return CommandRefused(f"refused: {command}: {p.name}={value!r} {problem}; expected {expected}")

    units = f" {p.units}" if p.units else ""
    if p.kind in ("px", "real"):
        expected = "a number >= 0" + units if p.kind == "px" else "a finite number" + units
        if not (_is_int(value) or isinstance(value, float)):
            raise refuse(f"is a {type(value).__name__}", expected)
        if not math.isfinite(value):
            raise refuse("is not finite", expected)
        if p.kind == "px" and value < 0:
            raise refuse("is negative", expected)
        return float(value)
    if p.kind in ("bead_id", "count"):
        low = 0 if p.kind == "bead_id" else 1
        expected = f"a whole number >= {low}"
        if not _is_int(value):
            raise refuse(f"is a {type(value).__name__}", expected)
        if value < low:
            raise refuse(f"is below {low}", expected)
        return int(value)
    if p.kind == "bead_ids":
        expected = "a non-empty list of bead ids (whole numbers >= 0)"
        if not isinstance(value, list) or not value:
            raise refuse("is not a non-empty list", expected)
        if not all(_is_int(b) and b >= 0 for b in value):
            raise refuse("holds something else than bead ids", expected)
        return [int(b) for b in value]
    if p.kind == "choice":
        if not isinstance(value, str) or value not in p.choices:
            raise refuse("is not an option", f"one of {', '.join(p.choices)}")
        return value
    raise AssertionError(p.kind)  # pragma: no cover - the table above


def plan_call(command: Any, args: Any = None) -> PlanCall:
    """The plan stub to run for ``command`` with ``args`` (a dict), or
    :class:`CommandRefused` naming the unknown command, argument or bad value."""
    if not isinstance(command, str) or command not in COMMANDS:
        raise CommandRefused(
            f"refused: unknown command {command!r}; allowed: {', '.join(sorted(COMMANDS))}"
        )
    spec = COMMANDS[command]
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise CommandRefused(f"refused: {command}: args must be a dict of named values")
    names = {p.name for p in spec.params}
    extra = sorted(set(args) - names)
    if extra:
        raise CommandRefused(
            f"refused: {command}: unknown argument {extra[0]!r}; allowed: {', '.join(sorted(names))}"
        )
    kwargs: dict[str, Any] = {}
    for p in spec.params:
        if args.get(p.name) is None:
            if p.required:
                raise CommandRefused(f"refused: {command}: {p.name} is missing")
            continue
        kwargs[p.name] = _check(command, p, args[p.name])
    return PlanCall(command, spec.plan, spec.device, kwargs)


def plan_running_refusal(plan_name: str | None = None) -> str:
    """The refusal of every command while a plan runs (the viewer's status bar shows it)."""
    return f"refused: a plan is running ({plan_name})" if plan_name else "refused: a plan is running"


def done_message(call: PlanCall, result: Any) -> str:
    """The line the viewer shows when ``call`` has run and returned ``result``."""
    k = call.kwargs
    if call.command == "add_bead":
        bead = "a bead" if result is None else f"bead {result}"
        return f"added {bead} at ({k['x_px']:.1f}, {k['y_px']:.1f}) px"
    if call.command == "move_bead":
        return f"moved bead {k['bead_id']} to ({k['x_px']:.1f}, {k['y_px']:.1f}) px"
    if call.command == "remove_beads":
        return f"removed bead{'s' if len(k['bead_ids']) > 1 else ''} {', '.join(map(str, k['bead_ids']))}"
    if call.command in _LOCK_DONE:
        return _LOCK_DONE[call.command]
    if call.command == "video_mode":
        every = f" (every {k['every_n']} frames)" if "every_n" in k else ""
        return f"video mode {k['mode']}{every}"
    if call.command == "auto_select":
        return "auto-selected beads" if result is None else f"auto-selected {len(result)} beads"
    moved = ", ".join(f"{key}={value:g}" for key, value in k.items())
    return f"moved {moved}"


# -- wire format -------------------------------------------------------------------------
def encode_request(command: str, args: dict[str, Any] | None, token: str) -> bytes:
    return json.dumps({"command": command, "args": args or {}, "token": token}).encode()


def decode(data: bytes) -> dict[str, Any]:
    """A JSON object (request or reply); ``ValueError`` for anything else."""
    value = json.loads(data.decode())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def encode_reply(ok: bool, message: str, result: Any = None) -> bytes:
    return json.dumps({"ok": bool(ok), "message": message, "result": result}).encode()


# -- discovery file ------------------------------------------------------------------------
def discovery_path(instance: str) -> Path:
    """``<runtime dir>/<instance>.commands.json``: where the owner of ``instance`` says
    how to reach its command channel."""
    check_instance_name(instance)
    return runtime_dir() / f"{instance}.commands.json"


def new_token() -> str:
    """A random token (the endpoint answers only requests that carry it)."""
    return secrets.token_urlsafe(24)


def write_discovery(instance: str, info: dict[str, Any]) -> Path:
    """Write ``info`` (with this process's pid) as ``instance``'s discovery file, readable
    by this user only; returns its path."""
    path = discovery_path(instance)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path


def read_discovery(instance: str) -> dict[str, Any] | None:
    """``instance``'s discovery file, or None when there is none (no owner with a command
    channel) or its writer has exited."""
    path = discovery_path(instance)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return info


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_discovery(path: Path) -> None:
    """Remove the discovery file at ``path`` if this process wrote it."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
