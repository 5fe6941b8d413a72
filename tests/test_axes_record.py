"""The axes record: the owner mirrors its axes into shared memory, another reader sees
them (real ophyd-async soft axes, no processes)."""

from __future__ import annotations

import asyncio
import math
import os

import pytest
from ophyd_async.core import init_devices

from magscope_devices import (
    AXES,
    FocusStage,
    Force,
    ForceCalibration,
    MagnetRotation,
    MagnetZ,
    read_axes,
)
from magscope_devices._axes_record import AXES_DTYPE, AxesLink
from magscope_ipc.shm import SHM_DIR, Segment, SharedRecord

CAL = ForceCalibration(
    f0_pn=68.0, a=0.7, l1_mm=0.8, l2_mm=1.65, min_height_mm=0.5, max_height_mm=8.0,
    bead_ids=(0,), bead_scale=(1.0,), source="uid-1", created=1_700_000_000.0,
)


@pytest.fixture
async def linked():
    async with init_devices():
        magnet_z = MagnetZ(initial=8.0, velocity=20.0)
        rotation = MagnetRotation()
        focus = FocusStage(initial=1000.0)
        force = Force(magnet_z)
    link = AxesLink(f"axestest{os.getpid()}")
    link.open()
    for key, axis in (("magnet_z_mm", magnet_z), ("magnet_turns", rotation),
                      ("focus_nm", focus), ("force_pn", force)):
        link.mirror(key, axis.readback)
        link.mirror(key + "_setpoint", axis.setpoint)
        link.mirror(key + "_low", axis.low_limit)
        link.mirror(key + "_high", axis.high_limit)
    reader = SharedRecord(Segment.attach(link.name, readonly=True))
    yield link, reader, (magnet_z, rotation, focus, force)
    reader.close()
    link.close()


async def test_record_follows_a_move_and_the_calibration(linked):
    link, reader, (magnet_z, rotation, focus, force) = linked
    assert reader.dtype == AXES_DTYPE and [k for k, _, _ in AXES] == [
        "magnet_z_mm", "magnet_turns", "focus_nm", "force_pn"]
    first = read_axes(reader)
    assert first is not None and first.owner_pid == os.getpid()
    assert first["magnet_z_mm"].value == 8.0 and first["magnet_z_mm"].units == "mm"
    assert (first["magnet_z_mm"].low, first["magnet_z_mm"].high) == (0.3, 10.0)
    assert first["focus_nm"].value == 1000.0 and first["magnet_turns"].value == 0.0
    assert math.isnan(first["force_pn"].value) and not first["magnet_z_mm"].moving

    status = magnet_z.set(3.0)  # 5 mm at 20 mm/s: 0.25 s
    await asyncio.sleep(0.08)
    during = read_axes(reader)
    assert during is not None and during.seq > first.seq
    assert during["magnet_z_mm"].moving and during["force_pn"].moving
    assert 3.0 < during["magnet_z_mm"].value < 8.0
    assert during["magnet_z_mm"].setpoint == 3.0
    await status
    after = read_axes(reader)
    assert after is not None and after["magnet_z_mm"].value == 3.0
    assert not after["magnet_z_mm"].moving and after.updated >= during.updated

    force.load_calibration(CAL, "in-memory")
    await asyncio.sleep(0)
    calibrated = read_axes(reader)
    assert calibrated is not None
    assert calibrated["force_pn"].value == pytest.approx(float(CAL.force_pn(3.0)))
    assert calibrated["force_pn"].low == pytest.approx(CAL.min_force_pn)
    await rotation.set(2.5)
    await focus.set(-500.0)
    last = read_axes(reader)
    assert last is not None
    assert last["magnet_turns"].value == 2.5 and last["focus_nm"].value == -500.0


async def test_reader_cannot_write_and_close_unlinks(linked):
    link, reader, _ = linked
    with pytest.raises((ValueError, TypeError)):
        reader["magnet_z_mm"] = 1.0
    path = SHM_DIR / link.name
    assert path.exists()
    link.close()
    assert not path.exists()
    link.close()  # idempotent


async def test_an_odd_sequence_is_never_read(linked):
    link, reader, _ = linked
    assert link.writer is not None
    record = link.writer.record
    record["seq"] = int(record["seq"]) + 1  # as if the owner were mid-write
    assert read_axes(reader, attempts=3) is None
    record["seq"] = int(record["seq"]) + 1
    assert read_axes(reader) is not None
