"""Strict inputs on the interactive path: every plan refuses a bad argument before its
first message (so no run opens and nothing moves), naming the argument and what it
expects; the axes refuse bools; a failed camera stops the next plan before it moves
anything; a Z-LUT or force calibration of other beads is refused unless asked; and in
IPython a refusal prints one line.

Fast: the microscope is built with ``init_devices(mock=True)`` (no camera or tracking
process), except one small real camera process that fails with a full disk.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices, set_mock_value

from magscope_devices import BeadRois, ForceCalibration, make_simulated_microscope
from magscope_devices._acquisition import AcquisitionConfig, AcquisitionProcess
from magscope_plans import (
    add_bead,
    auto_select_beads,
    count_at_heights,
    find_reference_beads,
    focus_scan,
    force_clamp,
    force_extension,
    force_ramp,
    move_axes,
    move_bead,
    remove_beads,
    restore_safe_state,
    rotation_extension,
    save_frames,
    set_video_mode,
)
from magscope_plans._arguments import (
    InstrumentNotReadyError,
    PlanArgumentError,
    PreflightError,
    refusal_line,
)
from magscope_plans._force_calibration import (
    calibration_cache_path,
    force_calibration,
    load_force_calibration,
)
from magscope_plans._zlut import load_zlut, zlut_cache_path, zlut_sweep
from magscope_tracking import ROI_DTYPE, ZLUT

PROFILE = Path(__file__).resolve().parents[1] / "src" / "magscope_session" / "profile"
nan = float("nan")


@pytest.fixture(scope="module")
def RE():
    return RunEngine({}, call_returns_result=True)


def _mock_microscope(tmp: Path, name: str = "mic"):
    with init_devices(mock=True):
        mic = make_simulated_microscope(data_dir=tmp, name=name)
    return mic


class FakeTrackingService:
    """What the tracker's ROI table and Z-LUT signals use of its tracking service."""

    running = True

    def __init__(self) -> None:
        self.rois = np.zeros(0, ROI_DTYPE)
        self.zlut_path: Path | None = None

    def set_rois(self, rows, roi_size_px: int) -> None:
        self.rois = np.asarray(rows, ROI_DTYPE)

    def load_zlut(self, path) -> None:
        self.zlut_path = Path(path)

    def clear_zlut(self) -> None:
        self.zlut_path = None


@pytest.fixture(scope="module")
def mic(RE, tmp_path_factory):
    microscope = _mock_microscope(tmp_path_factory.mktemp("data"))
    microscope.tracker.service = FakeTrackingService()
    return microscope


def _track(mic, rois: BeadRois) -> None:
    rows = np.zeros(len(rois.bead_id), ROI_DTYPE)
    rows["bead_id"], rows["x0"], rows["y0"] = rois.bead_id, rois.x0_px, rois.y0_px
    mic.tracker.service.set_rois(rows, 64)


@pytest.fixture
def docs(RE):
    seen: list[str] = []
    token = RE.subscribe(lambda name, doc: seen.append(name))
    yield seen
    RE.unsubscribe(token)


def _axes(RE, mic) -> list[float]:
    signals = [
        mic.magnet_z.readback, mic.magnet_z.setpoint, mic.magnet_rotation.readback,
        mic.magnet_rotation.setpoint, mic.focus.readback, mic.focus.setpoint,
    ]
    return [RE(bps.rd(s)).plan_result for s in signals]


# every plan, a bad argument each: (plan, the text its refusal must contain)
CASES = [
    # the examples of the issue
    (lambda m: count_at_heights(m, "12", num=1), "magnet_heights_mm='12' is a str; expected a list of magnet heights (mm)"),
    (lambda m: count_at_heights(m, [6.0], num=-1), "num=-1 is below 1; expected a whole number"),
    (lambda m: count_at_heights(m, [6.0], num="3"), "num='3' is a str; expected a whole number"),
    (lambda m: focus_scan(m, "a", 1, 5), "start_nm='a' is a str; expected a finite number of nm"),
    (lambda m: zlut_sweep(m, nan, 1000, 100), "start_nm=nan is not finite; expected a finite number of nm"),
    (lambda m: force_calibration(m, "2.0"), "magnet_heights_mm='2.0' is a str; expected a list of at least 2 magnet heights (mm)"),
    # the rest of each plan's arguments
    (lambda m: count_at_heights(m, 6.0), "magnet_heights_mm=6.0 is a float"),
    (lambda m: count_at_heights(m, []), "magnet_heights_mm=[] has 0 items"),
    (lambda m: count_at_heights(m, [6.0, nan]), "magnet_heights_mm[1]=nan is not finite"),
    (lambda m: count_at_heights(m, [True]), "magnet_heights_mm[0]=True is a bool"),
    (lambda m: count_at_heights(m, [6.0], delay_s=-1), "delay_s=-1 is negative; expected a non-negative number of s"),
    (lambda m: count_at_heights(m, [6.0], track="no"), "track='no' is a str; expected True or False"),
    (lambda m: count_at_heights(m, [6.0], md="sample A"), "md='sample A' is a str; expected a dict"),
    (lambda m: count_at_heights(m, [6.0], safe_magnet_height_mm="8"), "safe_magnet_height_mm='8' is a str"),
    (lambda m: count_at_heights("microscope", [6.0]), "microscope='microscope' is a str; expected the Microscope"),
    (lambda m: focus_scan(m, 0, math.inf, 5), "stop_nm=inf is not finite"),
    (lambda m: focus_scan(m, 0, 100, 1), "num=1 is below 2"),
    (lambda m: focus_scan(m, 0, 100, 5.0), "num=5.0 is a float; expected a whole number of points"),
    (lambda m: zlut_sweep(m, 0, 1000, -10), "step_nm=-10 is not positive; expected a positive number of nm"),
    (lambda m: zlut_sweep(m, 0, 200, 100), "step_nm=100.0 gives 3 focus steps"),
    (lambda m: zlut_sweep(m, 0, 1000, 100, frames_per_step=0), "frames_per_step=0 is below 1"),
    (lambda m: zlut_sweep(m, 0, 1000, 100, beads="012"), "beads='012' is a str; expected a list of bead ids"),
    (lambda m: zlut_sweep(m, 0, 1000, 100, magnet_z_mm="1"), "magnet_z_mm='1' is a str"),
    (lambda m: zlut_sweep(m, 0, 1000, 100, reference_beads=[-1]), "reference_beads[0]=-1 is below 0"),
    (lambda m: force_calibration(m, [2.0]), "magnet_heights_mm=[2.0] has 1 item"),
    (lambda m: force_calibration(m, [2.0, 2.0]), "has 1 different value"),
    (lambda m: force_calibration(m, [2, 4], duration_s=0), "duration_s=0 is not positive"),
    (lambda m: force_calibration(m, [2, 4], axis="z"), "axis='z' is not an option; expected one of ('x', 'y')"),
    (lambda m: force_calibration(m, [2, 4], rel_error=1.5), "rel_error=1.5 is at or above 1; expected a number in (0, 1)"),
    (lambda m: force_calibration(m, [2, 4], pilot_s=5, max_duration_s=2), "max_duration_s=2 is below 5 s"),
    (lambda m: force_calibration(m, [2, 4], beads=[1, 1]), "beads=[1, 1] repeats bead ids [1]"),
    (lambda m: force_extension(m, "1 2 3"), "forces_pn='1 2 3' is a str; expected a list of at least 3 forces (pN)"),
    (lambda m: force_extension(m, [1, 2, 2]), "forces_pn=[1, 2, 2] has 2 different values"),
    (lambda m: force_extension(m, [1, 2, 3], dwell_s="2"), "dwell_s='2' is a str"),
    (lambda m: force_extension(m, [1, 2, 3], direction="sideways"), "direction='sideways' is not an option"),
    (lambda m: force_extension(m, [1, 2, 3], extensible=1), "extensible=1 is an int; expected True or False"),
    (lambda m: rotation_extension(m, [0, 1, 2], force_pn=1.0), "turns=[0, 1, 2] has 3 items"),
    (lambda m: rotation_extension(m, range(5), force_pn=nan), "force_pn=nan is not finite; expected a finite number of pN"),
    (lambda m: force_ramp(m, 1.0, 5.0, 0.0), "rate_pn_per_s=0.0 is not positive; expected a positive number of pN/s"),
    (lambda m: force_ramp(m, 2.0, 2.0, 1.0), "stop_pn=2.0 equals start_pn=2"),
    (lambda m: force_ramp(m, 1.0, 5.0, 1.0, update_hz=100), "update_hz=100 is above 50 Hz"),
    (lambda m: force_clamp(m, "2.0", 10.0), "force_pn='2.0' is a str; expected a finite number of pN"),
    (lambda m: force_clamp(m, 2.0, -1), "duration_s=-1 is not positive; expected a positive number of s"),
    (lambda m: force_clamp(m, 2.0, 1, chunk_frames=0), "chunk_frames=0 is below 1"),
    (lambda m: force_clamp(m, 2.0, 1, video="movie"), "video='movie' is not an option; expected one of ('tracks', 'roi_crops', 'frames_every_n')"),
    (lambda m: force_ramp(m, 1.0, 5.0, 1.0, video="frames_every_n", every_n=0), "every_n=0 is below 1"),
    (lambda m: force_extension(m, [1, 2, 3], every_n=2.5), "every_n=2.5 is a float"),
    (lambda m: rotation_extension(m, range(5), force_pn=1.0, video=True), "video=True is not an option"),
    (lambda m: save_frames(m.video, -0.5, 1.0), "seconds_before=-0.5 is negative"),
    (lambda m: set_video_mode(m, "movie"), "mode='movie' is not an option; expected one of ('tracks', 'roi_crops', 'frames_every_n', 'trigger_window')"),
    (lambda m: set_video_mode(m, "trigger_window", pre_trigger_s=45.0), "pre_trigger_s=45.0 is too long; expected at most 30 s"),
    (lambda m: save_frames(m.video, 0.0, 0.0), "seconds_after=0.0 leaves an empty window"),
    (lambda m: save_frames(m.video, 60.0, 1.0), "seconds_before=60.0 is too long; expected at most 30 s"),
    (lambda m: add_bead(m.tracker, "100", 50), "x_px='100' is a str; expected a non-negative number of px"),
    (lambda m: add_bead(m, 100, 50), "tracker=Microscope(name=\"mic\") is a Microscope; expected the BeadTracker"),
    (lambda m: move_bead(m.tracker, 1.5, 10, 10), "bead_id=1.5 is a float; expected a bead id"),
    (lambda m: remove_beads(m.tracker, "12"), "bead_ids='12' is a str; expected a list of bead ids"),
    (lambda m: remove_beads(m.tracker, 3), "bead_ids=3 is an int"),
    (lambda m: find_reference_beads(m.tracker, frames=5), "frames=5 is below 10"),
    (lambda m: move_axes(m), "magnet_z_mm=None is missing (no axis given); expected at least one of"),
    (lambda m: move_axes(m, magnet_z_mm="2"), "magnet_z_mm='2' is a str; expected a finite number of mm"),
    (lambda m: move_axes(m, focus_nm=nan), "focus_nm=nan is not finite; expected a finite number of nm"),
    (lambda m: move_axes(m, magnet_turns=True), "magnet_turns=True is a bool"),
    (lambda m: move_axes(m, magnet_z_mm=2.0, force_pn=5.0), "force_pn=5.0 is given with magnet_z_mm"),
    (lambda m: move_axes(m.tracker, focus_nm=0.0), "microscope=BeadTracker"),
    (lambda m: find_reference_beads(m.tracker, max_lateral_std_nm=-1), "max_lateral_std_nm=-1 is not positive"),
    (lambda m: auto_select_beads(m.tracker, max_beads=True), "max_beads=True is a bool"),
    (lambda m: restore_safe_state(m, safe_magnet_height_mm=nan), "safe_magnet_height_mm=nan is not finite"),
    (lambda m: load_zlut(m, "run-uid"), "run='run-uid' is a str; expected a run from Tiled"),
    (lambda m: load_zlut(m, _run({}), allow_mismatch="yes"), "allow_mismatch='yes' is a str"),
    (lambda m: load_force_calibration(m, _run({}), max_shift_px=-1), "max_shift_px=-1 is negative"),
]


def _run(start: dict):
    """A stand-in for a Tiled run client: what the load plans read of it."""
    return SimpleNamespace(metadata={"start": start})


@pytest.mark.parametrize("make, message", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_argument_is_refused_at_the_first_next(mic, make, message):
    plan = make(mic)
    with pytest.raises(PlanArgumentError) as info:
        next(plan)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{plan.__name__}: ")  # names the plan
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make",
    [c[0] for c in CASES[:6]],
    ids=["count-str", "count-num-neg", "count-num-str", "focus-str", "zlut-nan", "cal-str"],
)
def test_issue_examples_open_no_run_and_move_nothing(RE, mic, docs, make):
    before = _axes(RE, mic)
    with pytest.raises(PlanArgumentError) as info:
        RE(make(mic))
    assert docs == []
    assert _axes(RE, mic) == before
    assert refusal_line(info.value).startswith("PlanArgumentError: ")


def test_out_of_range_height_is_refused_before_the_first_move(RE, mic, docs):
    before = _axes(RE, mic)
    with pytest.raises(PlanArgumentError, match=r"magnet_heights_mm\[1\]=12.0 is outside the magnet height limits \[0.3, 10\] mm"):
        RE(count_at_heights(mic, [6.0, 12.0], track=False))
    with pytest.raises(PlanArgumentError, match=r"stop_nm=1000000.0 is outside the focus limits"):
        RE(focus_scan(mic, 0, 1e6, 5))
    with pytest.raises(PlanArgumentError, match=r"turns\[4\]=500.0 is outside the rotation limits"):
        RE(rotation_extension_with_calibration(mic, [0, 1, 2, 3, 500]))
    with pytest.raises(PlanArgumentError, match=r"focus_nm=1000000.0 is outside the focus limits"):
        RE(move_axes(mic, magnet_z_mm=5.0, focus_nm=1e6))
    with pytest.raises(PreflightError, match=r"move_axes: no force calibration loaded"):
        RE(move_axes(mic, force_pn=5.0))
    assert docs == [] and _axes(RE, mic) == before


def rotation_extension_with_calibration(mic, turns):
    set_mock_value(mic.force.calibration_file, "cal.json")
    set_mock_value(mic.force.low_limit, 0.1)
    set_mock_value(mic.force.high_limit, 50.0)
    try:
        yield from rotation_extension(mic, turns, force_pn=1.0)
    finally:
        set_mock_value(mic.force.calibration_file, "")


@pytest.mark.parametrize(
    "axis, units", [("magnet_z", "mm"), ("magnet_rotation", "turns"), ("focus", "nm")]
)
def test_axes_refuse_bools_strings_and_nan(RE, mic, docs, axis, units):
    before = _axes(RE, mic)
    for target in (True, False, "1.0", nan, None):  # True used to move to 1.0
        with pytest.raises(FailedStatus) as info:
            RE(bps.mv(getattr(mic, axis), target))
        line = refusal_line(info.value)
        assert line is not None and line.startswith("LimitError: ")
        assert f"mic-{axis}: target {target!r}" in line and f"finite number of {units}" in line
    assert _axes(RE, mic) == before and docs == []


@pytest.mark.parametrize("target", [True, nan, "5"])
def test_force_refuses_bools_and_nan_before_asking_for_a_calibration(RE, mic, target):
    before = _axes(RE, mic)
    with pytest.raises(FailedStatus) as info:
        RE(bps.mv(mic.force, target))
    line = refusal_line(info.value)
    assert line is not None and line.startswith("ForceRangeError: ")
    assert f"force {target!r}" in line and "finite number of pN" in line
    assert _axes(RE, mic) == before


# -- a camera that has failed ---------------------------------------------------------------
class DiskFullSource:
    """A camera whose frames stop when the disk fills up (the error a full disk gives)."""

    def __init__(self) -> None:
        self.sensor_shape = (16, 16)
        self.dtype = np.dtype(np.uint8)
        self.bit_depth = 8
        self.n = 0

    def grab(self, t_s: float, exposure_s: float, gain: float, out: np.ndarray) -> None:
        self.n += 1
        if self.n > 3:
            raise OSError(28, "No space left on device")
        out[...] = self.n

    def close(self) -> None:
        pass


@pytest.mark.system
def test_after_a_camera_failure_the_next_plan_refuses_before_moving(RE, tmp_path, docs):
    mic = _mock_microscope(tmp_path, name="failing")
    process = AcquisitionProcess(
        source_factory=DiskFullSource, sensor_shape=(16, 16), dtype=np.uint8, bit_depth=8,
        config=AcquisitionConfig(instance=f"diskfull{os.getpid()}", ring_capacity=4),
    )
    process.start()
    try:
        # it dies at every start: restarted in place a few times, then left dead
        deadline = time.monotonic() + 60
        while not process.gave_up and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.gave_up and not process.running
        mic.camera.process = process
        RE(bps.mv(mic.magnet_z, 6.0))
        before = _axes(RE, mic)
        docs.clear()
        for plan in (
            count_at_heights(mic, [2.0], track=False),
            focus_scan(mic, -100, 100, 3),
            zlut_sweep(mic, -1000, 1000, 100, magnet_z_mm=1.0),
            force_calibration(mic, [1.0, 2.0]),
            auto_select_beads(mic.tracker),
        ):
            with pytest.raises(InstrumentNotReadyError) as info:
                RE(plan)
            message = str(info.value)
            assert "refused, nothing moved" in message
            assert "failing-camera: camera process failed: OSError: [Errno 28] No space left on device" in message
            assert refusal_line(info.value).startswith("InstrumentNotReadyError: ")
        assert docs == [] and _axes(RE, mic) == before
        RE(restore_safe_state(mic))  # leaving the instrument safe needs no camera
        assert RE(bps.rd(mic.magnet_z)).plan_result == 8.0
    finally:
        process.stop()


# -- Z-LUT and force calibration of other beads ---------------------------------------------
def _rois(ids, x0, y0) -> BeadRois:
    return BeadRois(
        bead_id=np.asarray(ids, np.int32), x0_px=np.asarray(x0, np.int32),
        y0_px=np.asarray(y0, np.int32),
    )


EIGHT = _rois(range(8), np.arange(8) * 70 + 10, np.full(8, 20))  # where the sweep saw them
TWENTY_FOUR = _rois(range(24), (np.arange(24) % 6) * 80 + 40, (np.arange(24) // 6) * 90 + 200)


def _zlut_run(mic, rois: dict | None) -> SimpleNamespace:
    """A zlut_sweep run whose Z-LUT is in the tracker's cache (named by the run uid)."""
    lut = ZLUT(
        z_nm=np.arange(7) * 100.0, profiles=np.random.default_rng(0).random((8, 7, 36)),
        roi_size=(32, 32), bin_px=0.25, nm_per_px=100.0, bead_ids=np.arange(8),
        created=time.time(),
    )
    uid = "0123456789abcdef"
    lut.save(zlut_cache_path(mic.tracker.data_dir, uid))
    start = {"uid": uid, "plan_name": "zlut_sweep"}
    if rois is not None:
        start["bead_rois"] = rois
    return _run(start)


def _as_md(rois: BeadRois, shift: int = 0) -> dict:
    return {
        "bead_id": [int(b) for b in rois.bead_id],
        "x0_px": [int(x) + shift for x in rois.x0_px],
        "y0_px": [int(y) for y in rois.y0_px],
    }


def test_zlut_of_another_flow_cell_is_refused_unless_asked(RE, mic, tmp_path, capsys):
    run = _zlut_run(mic, _as_md(EIGHT))
    _track(mic, TWENTY_FOUR)
    mic.tracker.service.clear_zlut()
    with pytest.raises(PreflightError) as info:
        RE(load_zlut(mic, run))
    message = str(info.value)
    assert "load_zlut: the Z-LUT of run 01234567 does not fit the beads tracked now" in message
    assert "beads 0-7 of the current ROI table sat" in message and "px away" in message
    assert "beads 8-23 have no table in it" in message and "allow_mismatch=True" in message
    assert RE(bps.rd(mic.tracker.zlut_path)).plan_result == ""  # nothing loaded

    RE(load_zlut(mic, run, allow_mismatch=True))
    out = capsys.readouterr().out
    assert RE(bps.rd(mic.tracker.zlut_path)).plan_result == str(
        zlut_cache_path(mic.tracker.data_dir, run.metadata["start"]["uid"])
    )
    assert "beads 0-7: the tables of the beads with these ids, whose ROIs were" in out
    assert "beads 8-23: no table" in out


def test_zlut_of_the_same_beads_loads_and_says_so(RE, mic, tmp_path, capsys):
    run = _zlut_run(mic, _as_md(EIGHT, shift=-3))  # the XY lock moved them by 3 px
    _track(mic, EIGHT)
    lut = RE(load_zlut(mic, run)).plan_result
    assert list(lut.bead_ids) == list(range(8))
    out = capsys.readouterr().out
    assert "beads 0-7: their own tables (ROIs within 10 px of where they were)" in out
    # bead 5 re-selected elsewhere: refused, naming it
    moved = _rois(range(8), np.r_[EIGHT.x0_px[:5], 400, EIGHT.x0_px[6:]], EIGHT.y0_px)
    _track(mic, moved)
    with pytest.raises(PreflightError, match=r"bead 5 of the current ROI table sat \d+-\d+ px away"):
        RE(load_zlut(mic, run))
    # an older run without ROI positions: matched by id, and said so
    _track(mic, EIGHT)
    RE(load_zlut(mic, _zlut_run(mic, None)))
    assert "matched by id only" in capsys.readouterr().out


def test_force_calibration_of_other_beads_is_refused_unless_asked(RE, mic, tmp_path, capsys):
    cal = ForceCalibration(
        f0_pn=80.0, a=0.6, l1_mm=0.6, l2_mm=1.8, min_height_mm=1.0, max_height_mm=6.5,
        bead_ids=tuple(range(8)), bead_scale=(1.0,) * 8,
    )
    uid = "fedcba9876543210"
    path = cal.save(calibration_cache_path(mic.tracker.data_dir, uid))
    run = _run({"uid": uid, "plan_name": "force_calibration", "bead_rois": _as_md(EIGHT)})
    set_mock_value(mic.force.calibration_file, "")
    _track(mic, TWENTY_FOUR)
    set_mock_value(mic.tracker.reference_beads, np.array([22, 23], np.int32))
    with pytest.raises(PreflightError) as info:
        RE(load_force_calibration(mic, run))
    assert "beads 8-21 have no table in it" in str(info.value)  # reference beads need none
    assert RE(bps.rd(mic.force.calibration_file)).plan_result == ""
    RE(load_force_calibration(mic, run, allow_mismatch=True))
    assert RE(bps.rd(mic.force.calibration_file)).plan_result == str(path)
    assert "beads 8-21: no table" in capsys.readouterr().out
    set_mock_value(mic.tracker.reference_beads, np.zeros(0, np.int32))
    set_mock_value(mic.force.calibration_file, "")


def test_wrong_kind_of_run_is_refused(RE, mic):
    with pytest.raises(PlanArgumentError, match="run='abc' is a 'count' run; expected a zlut_sweep run"):
        RE(load_zlut(mic, _run({"uid": "abc", "plan_name": "count"})))


# -- one line at the IPython prompt ---------------------------------------------------------
IPYTHON_INPUT = """\
from ophyd_async.core import init_devices
from magscope_devices import make_simulated_microscope
from magscope_plans import count_at_heights
import bluesky.plan_stubs as bps
with init_devices(mock=True): mic = make_simulated_microscope(data_dir={data!r}, name="mic")

RE(count_at_heights(mic, "12", num=1))
RE(bps.mv(mic.magnet_z, True))
print("MAGNET", RE(bps.rd(mic.magnet_z)).plan_result)
def broken():
    yield from bps.null()
    raise RuntimeError("an unexpected failure")

RE(broken())
"""


@pytest.mark.system
def test_ipython_prints_one_line_for_a_refusal(tmp_path):
    """The profile's startup files as IPython runs them (the RunEngine file and the
    refusal display; not the devices, Tiled or the proxy): a refusal is one line, an
    unexpected error keeps its traceback."""
    startup = tmp_path / "profile" / "startup"
    startup.mkdir(parents=True)
    for name in ("00-run-engine.py", "05-refusals.py"):
        shutil.copy(PROFILE / "startup" / name, startup / name)
    env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipython"), PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-m", "IPython", f"--profile-dir={tmp_path / 'profile'}", "--no-banner",
         "--simple-prompt", "--colors=nocolor"],
        input=IPYTHON_INPUT.format(data=str(tmp_path / "data")), capture_output=True,
        text=True, timeout=120, env=env,
    )
    text = out.stdout + out.stderr
    lines = [line for line in text.splitlines() if "Error: " in line]
    assert any(
        line.endswith("PlanArgumentError: count_at_heights: magnet_heights_mm='12' is a str; "
                      "expected a list of magnet heights (mm), e.g. [6.0, 4.0]")
        for line in lines
    ), text
    assert any(
        line.endswith("LimitError: mic-magnet_z: target True is a bool, not a finite number of mm")
        for line in lines
    ), text
    # the refusals came without tracebacks, the magnets did not move; the unexpected
    # error kept its traceback (and bluesky's "Run aborted" log)
    refusals, unexpected = text.split("MAGNET 8.0")
    assert "Traceback" not in refusals and "Run aborted" not in refusals, text
    assert "RuntimeError: an unexpected failure" in unexpected and "Traceback" in unexpected
    assert "Run aborted" in unexpected


def test_refusal_display_keeps_the_traceback_of_other_errors(capsys):
    import logging

    from magscope_devices import LimitError
    from magscope_session._refusals import RunAbortedRefusalFilter, _show

    def failed(cause: BaseException) -> FailedStatus:
        try:
            raise FailedStatus("status") from cause
        except FailedStatus as exc:
            return exc

    shown: list[BaseException] = []
    shell = SimpleNamespace(showtraceback=lambda exc_tuple, **kw: shown.append(exc_tuple[1]))
    refused = failed(LimitError("mic-magnet_z: target True is a bool, not a finite number of mm"))
    hardware = failed(RuntimeError("the motor controller stopped answering"))
    _show(shell, FailedStatus, refused, None)
    assert capsys.readouterr().out == (
        "LimitError: mic-magnet_z: target True is a bool, not a finite number of mm\n"
    )
    _show(shell, FailedStatus, hardware, None)
    assert shown == [hardware] and capsys.readouterr().out == ""
    keep = RunAbortedRefusalFilter().filter

    def record(exc: BaseException) -> logging.LogRecord:
        return logging.LogRecord("bluesky", logging.ERROR, "", 0, "Run aborted", None, (type(exc), exc, None))

    assert not keep(record(refused)) and keep(record(hardware))
