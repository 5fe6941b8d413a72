"""The viewer's command allowlist (no process, no Qt): which commands exist, the plan stub
and arguments each becomes, and the one-line refusals of anything else."""

from __future__ import annotations

import json
import math
import os

import pytest

import magscope_plans
from magscope_session._viewer_commands import (
    COMMANDS,
    CommandRefused,
    PlanCall,
    decode,
    discovery_path,
    done_message,
    encode_request,
    plan_call,
    plan_running_refusal,
    read_discovery,
    remove_discovery,
    write_discovery,
)


def test_each_command_names_an_exported_plan_stub_allowed_in_the_queue():
    import yaml

    from magscope_session._setup import __file__ as setup_file

    perms = os.path.join(os.path.dirname(setup_file), "profile", "startup", "user_group_permissions.yaml")
    with open(perms) as f:
        allowed = set(yaml.safe_load(f)["user_groups"]["primary"]["allowed_plans"])
    for spec in COMMANDS.values():
        assert callable(getattr(magscope_plans, spec.plan))
        assert spec.plan in allowed
        assert spec.device in ("microscope", "microscope.tracker")


@pytest.mark.parametrize("command, args, call", [
    ("add_bead", {"x_px": 120, "y_px": 80.5},
     PlanCall("add_bead", "add_bead", "microscope.tracker", {"x_px": 120.0, "y_px": 80.5})),
    ("move_bead", {"bead_id": 3, "x_px": 1.0, "y_px": 2.0},
     PlanCall("move_bead", "move_bead", "microscope.tracker", {"bead_id": 3, "x_px": 1.0, "y_px": 2.0})),
    ("remove_beads", {"bead_ids": [4, 7]},
     PlanCall("remove_beads", "remove_beads", "microscope.tracker", {"bead_ids": [4, 7]})),
    ("auto_select", None, PlanCall("auto_select", "auto_select_beads", "microscope.tracker", {})),
    ("auto_select", {"max_beads": 20},
     PlanCall("auto_select", "auto_select_beads", "microscope.tracker", {"max_beads": 20})),
    ("move_axes", {"magnet_z_mm": 2, "focus_nm": None},
     PlanCall("move_axes", "move_axes", "microscope", {"magnet_z_mm": 2.0})),
    ("lock_focus", None, PlanCall("lock_focus", "lock_focus", "microscope", {})),
    ("unlock_xy", {}, PlanCall("unlock_xy", "unlock_xy", "microscope", {})),
    ("video_mode", {"mode": "frames_every_n", "every_n": 25},
     PlanCall("video_mode", "set_video_mode", "microscope",
              {"mode": "frames_every_n", "every_n": 25})),
])
def test_allowed_commands_become_plan_calls(command, args, call):
    assert plan_call(command, args) == call


@pytest.mark.parametrize("command, args, message", [
    ("lock_focus", {"target_nm": 3.0}, "refused: lock_focus: unknown argument 'target_nm'"),
    ("set_rois", {}, "refused: unknown command 'set_rois'; allowed: add_bead, auto_select, lock_focus, lock_xy, move_axes, move_bead, remove_beads, unlock_focus, unlock_xy, video_mode"),
    (None, {}, "refused: unknown command None"),
    ("add_bead", [1, 2], "refused: add_bead: args must be a dict of named values"),
    ("add_bead", {"x_px": 1.0}, "refused: add_bead: y_px is missing"),
    ("add_bead", {"x_px": 1.0, "y_px": 2.0, "z": 1}, "refused: add_bead: unknown argument 'z'; allowed: x_px, y_px"),
    ("add_bead", {"x_px": math.nan, "y_px": 2.0}, "refused: add_bead: x_px=nan is not finite; expected a number >= 0 px"),
    ("add_bead", {"x_px": -1.0, "y_px": 2.0}, "refused: add_bead: x_px=-1.0 is negative"),
    ("add_bead", {"x_px": "10", "y_px": 2.0}, "refused: add_bead: x_px='10' is a str"),
    ("add_bead", {"x_px": True, "y_px": 2.0}, "refused: add_bead: x_px=True is a bool"),
    ("move_bead", {"bead_id": 1.0, "x_px": 1, "y_px": 1}, "refused: move_bead: bead_id=1.0 is a float; expected a whole number >= 0"),
    ("move_bead", {"bead_id": -2, "x_px": 1, "y_px": 1}, "bead_id=-2 is below 0"),
    ("remove_beads", {"bead_ids": []}, "bead_ids=[] is not a non-empty list"),
    ("remove_beads", {"bead_ids": [1, "2"]}, "holds something else than bead ids"),
    ("auto_select", {"max_beads": 0}, "max_beads=0 is below 1"),
    ("video_mode", {"mode": "movie"}, "refused: video_mode: mode='movie' is not an option; expected one of tracks, roi_crops, frames_every_n, trigger_window"),
    ("video_mode", {"mode": "frames_every_n", "every_n": 0}, "every_n=0 is below 1"),
    ("move_axes", {"force_pn": math.inf}, "refused: move_axes: force_pn=inf is not finite; expected a finite number pN"),
])
def test_anything_else_is_refused_naming_the_value(command, args, message):
    with pytest.raises(CommandRefused) as info:
        plan_call(command, args)
    assert str(info.value).startswith(message) or message in str(info.value)
    assert "\n" not in str(info.value)


def test_wire_format_and_messages():
    request = decode(encode_request("add_bead", {"x_px": 1.5, "y_px": 2}, "tok"))
    assert request == {"command": "add_bead", "args": {"x_px": 1.5, "y_px": 2}, "token": "tok"}
    with pytest.raises(ValueError):
        decode(b"[1, 2]")
    assert plan_running_refusal("zlut_sweep") == "refused: a plan is running (zlut_sweep)"
    assert plan_running_refusal(None) == "refused: a plan is running"
    call = plan_call("remove_beads", {"bead_ids": [2, 5]})
    assert done_message(call, None) == "removed beads 2, 5"
    assert done_message(plan_call("add_bead", {"x_px": 1, "y_px": 2}), 7) == "added bead 7 at (1.0, 2.0) px"


def test_discovery_file_is_private_and_names_a_live_owner():
    name = f"viewer-proto-{os.getpid()}"
    path = write_discovery(name, {"transport": "zmq", "address": "tcp://127.0.0.1:1", "token": "t"})
    try:
        assert path == discovery_path(name)
        assert (path.stat().st_mode & 0o777) == 0o600
        info = read_discovery(name)
        assert info is not None and info["pid"] == os.getpid() and info["token"] == "t"
        # a file left by an owner that has exited is no channel
        path.write_text(json.dumps({**info, "pid": 2**22 + 12345}))
        assert read_discovery(name) is None
        remove_discovery(path)  # not ours (another pid): left alone
        assert path.exists()
    finally:
        path.unlink(missing_ok=True)
    assert read_discovery(name) is None
    with pytest.raises(ValueError):
        discovery_path("../etc")
