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

from magscope_devices.force import NoForceCalibrationError
from magscope_devices.force_curve import ForceCalibration, ForceRangeError
from magscope_devices.microscope import make_simulated_microscope
from magscope_devices.motors import LimitError

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
