"""Magnet height, magnet rotation and focus stage: limits, velocity, arrival, stop."""

from __future__ import annotations

import asyncio

import pytest
from ophyd_async.core import init_devices

from magscope_devices import FocusStage, LimitError, MagnetRotation, MagnetZ


@pytest.fixture
async def axes():
    async with init_devices():
        magnet_z = MagnetZ(initial=8.0, velocity=20.0)
        rotation = MagnetRotation(velocity=50.0)
        focus = FocusStage(initial=1000.0)
    return magnet_z, rotation, focus


async def test_move_arrives_at_the_velocity(axes):
    magnet_z, _, _ = axes
    seen = []
    status = magnet_z.set(6.0)
    status.watch(lambda current, **_: seen.append(current))
    await status
    assert await magnet_z.readback.get_value() == 6.0
    # it travels (positions between start and end, in order), not jumps; how long the
    # travel takes against the velocity is benchmarks/bench_motors.py's figure
    assert len(seen) >= 3 and all(6.0 <= v <= 8.0 for v in seen)
    assert seen == sorted(seen, reverse=True)
    reading = await magnet_z.read()
    assert reading[magnet_z.name]["value"] == 6.0
    assert (await magnet_z.describe())[magnet_z.name]["units"] == "mm"


@pytest.mark.parametrize(
    "axis_index, target, message",
    [
        (0, 0.1, r"target 0.1 mm is below the lower limit 0.3 mm"),
        (0, 12.0, r"target 12.0 mm is above the upper limit 10.0 mm"),
        (1, 250.0, r"target 250.0 turns is above the upper limit 200.0 turns"),
        (2, -30000.0, r"target -30000.0 nm is below the lower limit -20000.0 nm"),
        (0, float("nan"), r"target nan is not a finite number of mm"),
    ],
)
async def test_out_of_range_moves_are_refused_before_moving(axes, axis_index, target, message):
    axis = axes[axis_index]
    before = await axis.readback.get_value()
    with pytest.raises(LimitError, match=message):
        await axis.set(target)
    assert await axis.readback.get_value() == before
    assert await axis.setpoint.get_value() == before


async def test_limits_are_signals_a_plan_can_change(axes):
    magnet_z, _, _ = axes
    await magnet_z.low_limit.set(1.0)
    with pytest.raises(LimitError, match="below the lower limit 1.0 mm"):
        await magnet_z.set(0.5)


async def test_stop_interrupts_a_move_where_it_is(axes):
    _, rotation, _ = axes
    await rotation.velocity.set(10.0)
    status = rotation.set(50.0)
    await asyncio.sleep(0.3)
    await rotation.stop(success=False)
    with pytest.raises(RuntimeError, match="was stopped"):
        await status
    position = await rotation.readback.get_value()
    assert 1.0 < position < 10.0
    await asyncio.sleep(0.2)
    assert await rotation.readback.get_value() == position


def test_initial_position_outside_limits_is_refused():
    with pytest.raises(LimitError, match="initial position 20.0 mm is outside the limits"):
        MagnetZ(initial=20.0)
