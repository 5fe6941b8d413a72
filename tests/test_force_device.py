"""The Force device: a movable in pN over the magnet height through a force calibration."""

from __future__ import annotations

import asyncio
import math

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from ophyd_async.core import init_devices

from magscope_devices import (
    Force,
    ForceCalibration,
    ForceRangeError,
    LimitError,
    MagnetZ,
    NoForceCalibrationError,
)

CAL = ForceCalibration(
    f0_pn=68.0,
    a=0.7,
    l1_mm=0.8,
    l2_mm=1.65,
    min_height_mm=0.5,
    max_height_mm=8.0,
    bead_ids=(0, 1),
    bead_scale=(1.0, 1.05),
    source="uid-1",
    created=1_700_000_000.0,
)


@pytest.fixture
async def devices():
    async with init_devices():
        magnet_z = MagnetZ(initial=8.0, velocity=50.0)
        force = Force(magnet_z)
    return magnet_z, force


@pytest.fixture
def cal_file(tmp_path):
    return str(CAL.save(tmp_path / "force_calibration.json"))


async def test_magnet_is_a_reference_not_a_child(devices):
    magnet_z, force = devices
    assert force.magnet_z is magnet_z
    assert "magnet_z" not in dict(force.children())
    assert magnet_z.name == "magnet_z" and force.name == "force"


async def test_set_without_calibration_is_refused(devices):
    magnet_z, force = devices
    assert math.isnan(await force.readback.get_value())
    with pytest.raises(
        NoForceCalibrationError, match=r"no force calibration loaded.*force_calibration"
    ):
        await force.set(5.0)
    assert await magnet_z.readback.get_value() == 8.0


async def test_load_calibration_file_sets_limits_and_readback(devices, cal_file):
    magnet_z, force = devices
    await force.calibration_file.set(cal_file)
    assert force.calibration == CAL
    assert await force.low_limit.get_value() == pytest.approx(CAL.min_force_pn)
    assert await force.high_limit.get_value() == pytest.approx(CAL.max_force_pn)
    config = await force.read_configuration()
    assert config["force-calibration_file"]["value"] == cal_file
    assert (await force.describe_configuration())["force-low_limit"]["units"] == "pN"
    reading = await force.read()
    assert reading["force"]["value"] == pytest.approx(float(CAL.force_pn(8.0)))
    assert (await force.describe())["force"]["units"] == "pN"
    # "" unloads
    await force.calibration_file.set("")
    assert force.calibration is None
    assert math.isnan(await force.readback.get_value())
    assert math.isnan(await force.high_limit.get_value())


async def test_a_reading_carries_the_calibrations_error_there(devices, tmp_path):
    magnet_z, force = devices
    cov = ((0.25, 0.0, 0.0, 0.0), (0.0, 1e-4, 0.0, 0.0), (0.0, 0.0, 1e-4, 0.0),
           (0.0, 0.0, 0.0, 4e-4))
    cal = ForceCalibration(
        f0_pn=68.0, a=0.7, l1_mm=0.8, l2_mm=1.65, min_height_mm=0.5, max_height_mm=6.5,
        bead_ids=(0, 1), bead_scale=(1.0, 1.05), covariance=cov, created=1.0,
    )
    await force.calibration_file.set(str(cal.save(tmp_path / "cal.json")))
    await magnet_z.set(3.0)
    reading = await force.read()
    assert reading["force-error_pn"]["value"] == pytest.approx(cal.force_err_pn(3.0))
    assert 0 < reading["force-error_pn"]["value"] < 0.1 * reading["force"]["value"]
    assert (await force.describe())["force-error_pn"]["units"] == "pN"
    await magnet_z.set(8.0)  # above the calibrated heights: an extrapolation
    assert math.isnan(await force.error_pn.get_value())
    assert not math.isnan(await force.readback.get_value())


async def test_bad_calibration_file_is_refused(devices, tmp_path):
    _, force = devices
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nope"}')
    with pytest.raises(ValueError, match="not a force calibration"):
        await force.calibration_file.set(str(bad))
    assert force.calibration is None
    assert await force.calibration_file.get_value() == ""


async def test_set_moves_the_magnet_to_the_calibrated_height(devices, cal_file):
    magnet_z, force = devices
    await force.calibration_file.set(cal_file)
    seen = []
    status = force.set(5.0)
    status.watch(lambda current, **kw: seen.append((current, kw["unit"], kw["target"])))
    await status
    height = await magnet_z.readback.get_value()
    assert height == pytest.approx(CAL.height_mm(5.0), abs=1e-12)
    assert await force.readback.get_value() == pytest.approx(5.0, abs=1e-6)
    assert await force.setpoint.get_value() == 5.0
    location = await force.locate()
    assert location["setpoint"] == 5.0 and location["readback"] == pytest.approx(5.0, abs=1e-6)
    # progress is reported in pN while the magnet moves
    assert len(seen) >= 3
    assert all(unit == "pN" and target == 5.0 for _, unit, target in seen)
    assert seen[0][0] == pytest.approx(float(CAL.force_pn(8.0)))
    assert all(b >= a for (a, _, _), (b, _, _) in zip(seen, seen[1:], strict=False))


@pytest.mark.parametrize("target", [60.0, 0.05])
async def test_out_of_range_force_is_refused_before_moving(devices, cal_file, target):
    magnet_z, force = devices
    await force.calibration_file.set(cal_file)
    with pytest.raises(
        ForceRangeError, match=rf"force {target} pN is outside the calibrated range"
    ):
        await force.set(target)
    assert await magnet_z.readback.get_value() == 8.0
    assert await magnet_z.setpoint.get_value() == 8.0
    assert math.isnan(await force.setpoint.get_value())


async def test_force_beyond_the_magnet_limits_is_refused(devices, cal_file):
    magnet_z, force = devices
    await force.calibration_file.set(cal_file)
    await magnet_z.low_limit.set(2.0)
    with pytest.raises(
        LimitError, match=r"force 30.0 pN needs magnet height .* below the lower limit 2.0 mm"
    ):
        await force.set(30.0)
    assert await magnet_z.readback.get_value() == 8.0


async def test_load_calibration_object_updates_subscribers(devices):
    _, force = devices
    values = []

    def on_reading(reading):
        values.append(reading[force.name]["value"])

    force.readback.subscribe_reading(on_reading)
    force.load_calibration(CAL, "in-memory")
    await asyncio.sleep(0)
    force.readback.clear_sub(on_reading)
    assert math.isnan(values[0])
    assert values[-1] == pytest.approx(float(CAL.force_pn(8.0)))
    assert await force.calibration_file.get_value() == "in-memory"


async def test_stop_stops_the_magnet(devices, cal_file):
    magnet_z, force = devices
    await force.calibration_file.set(cal_file)
    await magnet_z.velocity.set(10.0)
    status = force.set(20.0)  # about 7 mm at 10 mm/s
    await asyncio.sleep(0.2)
    await force.stop(success=False)
    with pytest.raises(RuntimeError, match="was stopped"):
        await status
    height = await magnet_z.readback.get_value()
    assert 5.0 < height < 7.9
    await asyncio.sleep(0.1)
    assert await magnet_z.readback.get_value() == height


def test_plan_loads_the_calibration_and_sets_a_force(cal_file):
    RE = RunEngine(call_returns_result=True)
    with init_devices():
        magnet_z = MagnetZ(initial=8.0, velocity=50.0)
        force = Force(magnet_z)

    def plan():
        yield from bps.mv(force.calibration_file, cal_file)
        yield from bps.mv(force, 2.0)
        return (yield from bps.rd(force))

    result = RE(plan())
    assert result.plan_result == pytest.approx(2.0, abs=1e-6)
    assert force.name == "force" and magnet_z.name == "magnet_z"
