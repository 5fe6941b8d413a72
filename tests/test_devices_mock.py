"""The microscope's devices in ophyd-async's mock mode (fast tier).

``init_devices(mock=True)`` builds the whole simulated microscope without its camera
process, tracking workers or shared memory; values are set with ``set_mock_value`` and
what a device writes is seen with ``callback_on_mock_put`` / ``get_mock_put``. These check
the devices' own logic: units on every number, the force device's conversion to a magnet
height, the axes' limits, and what a plan stub writes to a signal.
"""

from __future__ import annotations

import numpy as np
import pytest
from ophyd_async.core import (
    StandardDetector,
    callback_on_mock_put,
    get_mock_put,
    init_devices,
    set_mock_value,
)

from magscope_devices import (
    ForceCalibration,
    ForceRangeError,
    LimitError,
    NoForceCalibrationError,
    make_simulated_microscope,
)

CAL = ForceCalibration(
    f0_pn=68.0, a=0.7, l1_mm=0.8, l2_mm=1.65, min_height_mm=0.5, max_height_mm=8.0,
    bead_ids=(0, 1), bead_scale=(1.0, 1.05), source="uid-1", created=1_700_000_000.0,
)

#: Numbers with no physical unit: a gain ratio and bead identifiers.
UNITLESS = {"mic-camera-gain", "mic-tracker-reference_beads", "mic-tracker-bead_ids"}


@pytest.fixture
async def mic(tmp_path):
    async with init_devices(mock=True):
        microscope = make_simulated_microscope(data_dir=tmp_path, name="mic")
    for axis, low, high, position, velocity in (
        (microscope.magnet_z, 0.5, 8.0, 8.0, 50.0),
        (microscope.magnet_rotation, -200.0, 200.0, 0.0, 50.0),
        (microscope.focus, 0.0, 100_000.0, 50_000.0, 1e6),
    ):
        set_mock_value(axis.low_limit, low)
        set_mock_value(axis.high_limit, high)
        set_mock_value(axis.readback, position)
        set_mock_value(axis.setpoint, position)
        set_mock_value(axis.velocity, velocity)
    return microscope


async def test_mock_microscope_starts_no_process_and_makes_no_shared_memory(mic):
    assert mic.camera.process.process is None
    assert mic.tracker.service is None or not mic.tracker.service.running


async def test_every_number_the_microscope_publishes_has_units(mic):
    described = {}
    for device in (mic, mic.camera, mic.tracker):
        described.update(await device.describe_configuration())
        if not isinstance(device, StandardDetector):  # a detector describes after prepare
            described.update(await device.describe())
    numeric = {
        key: desc for key, desc in described.items()
        if desc["dtype"] in ("number", "integer")
        or (desc["dtype"] == "array" and np.dtype(desc.get("dtype_numpy") or "f8").kind in "iuf")
    }
    assert {"mic-magnet_z", "mic-force", "mic-camera-exposure_s"} <= set(numeric)
    missing = sorted(k for k, d in numeric.items() if not d.get("units") and k not in UNITLESS)
    assert not missing, f"numbers without units: {missing}"
    assert numeric["mic-magnet_z"]["units"] == "mm" and numeric["mic-force"]["units"] == "pN"


async def test_force_puts_the_calibrated_height_on_the_magnet(mic):
    with pytest.raises(NoForceCalibrationError):
        await mic.force.set(2.0)
    assert not get_mock_put(mic.magnet_z.setpoint).called  # refused before anything moved
    mic.force.load_calibration(CAL)
    puts: list[float] = []
    callback_on_mock_put(mic.magnet_z.setpoint, lambda value, **_: puts.append(value))
    await mic.force.set(2.0)
    assert len(puts) == 1
    assert CAL.force_pn(puts[0]) == pytest.approx(2.0, rel=1e-9)
    assert await mic.magnet_z.readback.get_value() == pytest.approx(puts[0])


async def test_force_beyond_the_calibrated_range_is_refused_naming_the_limit(mic):
    mic.force.load_calibration(CAL)
    with pytest.raises((ForceRangeError, LimitError), match="pN"):
        await mic.force.set(500.0)
    assert not get_mock_put(mic.magnet_z.setpoint).called


async def test_axis_limits_come_from_their_signals(mic):
    set_mock_value(mic.focus.high_limit, 60_000.0)
    with pytest.raises(LimitError, match="above the upper limit 60000.0 nm"):
        await mic.focus.set(70_000.0)
    assert not get_mock_put(mic.focus.setpoint).called
    await mic.focus.set(55_000.0)
    get_mock_put(mic.focus.setpoint).assert_called_once_with(55_000.0)


async def test_reference_bead_choice_is_what_a_plan_stub_writes(mic):
    written: list[np.ndarray] = []
    callback_on_mock_put(mic.tracker.reference_beads, lambda value, **_: written.append(value))
    await mic.tracker.reference_beads.set(np.array([3, 7], np.int32))
    assert [w.tolist() for w in written] == [[3, 7]]
    assert (await mic.tracker.reference_beads.get_value()).tolist() == [3, 7]



async def test_summary_reads_every_axis_and_the_force(mic):
    """In mock mode the camera has no process: the summary says so and reads the rest."""
    set_mock_value(mic.magnet_z.readback, 4.25)
    set_mock_value(mic.tracker.reference_beads, np.array([5], np.int32))
    summary = await mic.read_summary(fps_interval_s=0)
    by_name = {axis.name: axis for axis in summary.axes}
    assert list(by_name) == ["magnet_z", "magnet_rotation", "focus"]
    assert by_name["magnet_z"].position == 4.25 and by_name["magnet_z"].units == "mm"
    assert by_name["magnet_rotation"].units == "turns" and by_name["focus"].units == "nm"
    assert (by_name["focus"].low_limit, by_name["focus"].high_limit) == (0.0, 100_000.0)
    assert summary.force.units == "pN" and np.isnan(summary.force.position)
    assert summary.force_calibration is None
    assert "not connected" in summary.camera["error"]
    assert summary.bead_ids.tolist() == []  # no tracking service: no beads
    text = repr(summary)
    assert "magnet_z" in text and "4.2500" in text and "(no force calibration)" in text
    assert "camera     unavailable: mic-camera is not connected" in text
    # with a calibration, the force has limits and names the run it came from
    mic.force.load_calibration(CAL)
    summary = await mic.read_summary(fps_interval_s=0)
    assert summary.force_calibration == "uid-1"
    assert summary.force.low_limit == pytest.approx(CAL.min_force_pn)
    assert "(calibration of run uid-1)" in str(summary)
    with pytest.raises(RuntimeError, match="await microscope.read_summary"):
        mic.summary()  # it would block the loop it runs on


def test_summary_table_shows_health_and_the_bead_table():
    from magscope_devices._summary import AxisState, MicroscopeSummary

    summary = MicroscopeSummary(
        name="mic",
        axes=[AxisState("magnet_z", 4.25, 0.3, 10.0, "mm")],
        force=AxisState("force", 2.5, 0.1, 60.0, "pN"),
        force_calibration="",
        camera={"frame_rate_hz": 100.0, "measured_fps": 99.5, "exposure_s": 0.005,
                "frames_acquired": 1234, "frames_late": 2},
        tracking={"frames_tracked": 1200, "frames_dropped": 3, "queue_depth": 1,
                  "latency_p50_s": 0.0012, "latency_p99_s": 0.0034, "zlut_uid": "abc"},
        bead_ids=np.array([0, 1, 5]), roi_x0_px=np.array([68, 168, 268]),
        roi_y0_px=np.array([18, 28, 38]), reference=np.array([False, False, True]),
        height_nm=np.array([2500.0, np.nan, 0.0]),
    )
    lines = str(summary).splitlines()
    assert lines[0] == "mic"
    assert "100.0 frames/s set, 99.5 measured; exposure 5.000 ms; 1,234 frames, 2 late" in lines[4]
    assert "1,200 frames tracked, 3 dropped, queue 1; latency p50 1.2 ms, p99 3.4 ms" in lines[5]
    assert lines[6].split() == ["Z-LUT", "run", "abc"]
    assert lines[7].split() == ["beads", "3", "(1", "reference)"]
    assert lines[9].split() == ["0", "68", "18", "2500.0"]
    assert lines[10].split() == ["1", "168", "28"]
    assert lines[11].split() == ["5", "268", "38", "*", "0.0"]
    assert "more" in summary.text(max_beads=2)
