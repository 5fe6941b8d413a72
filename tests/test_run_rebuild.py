"""A run in Tiled alone is enough to rebuild its results: a Z-LUT sweep and a force
calibration on the simulated microscope, written through the session's TiledWriter; then
every file beside the runs (Z-LUT and calibration caches, track tables) is deleted and
``zlut_of`` and ``force_calibration_of`` rebuild the same Z-LUT and calibration from the
server, and ``load_zlut`` / ``load_force_calibration`` load them into a live instrument."""

from __future__ import annotations

from pathlib import Path

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from ophyd_async.core import init_devices

from magscope_devices import ForceCalibration, make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_plans import find_reference_beads
from magscope_plans._force_calibration import (
    calibration_cache_path,
    force_calibration,
    load_force_calibration,
)
from magscope_plans._zlut import load_zlut, zlut_cache_path, zlut_sweep
from magscope_session import TiledTarget, make_run_engine, session_metadata, subscribe_tiled_writer
from magscope_session.runs import force_calibration_of, zlut_of
from magscope_tracking import ZLUT

pytestmark = pytest.mark.system

PARAMS = SimParams(
    seed=11, n_tethered=2, n_reference=1, width_px=320, height_px=256,
    contour_nm_range=(1000.0, 1400.0),
)


def _assert_same_zlut(a: ZLUT, b: ZLUT) -> None:
    np.testing.assert_allclose(a.profiles, b.profiles, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.z_nm, b.z_nm, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(a.bead_ids, b.bead_ids)
    assert a.roi_size == b.roi_size and a.source == b.source
    assert a.bin_px == pytest.approx(b.bin_px, abs=1e-9)
    assert a.nm_per_px == pytest.approx(b.nm_per_px, abs=1e-9)
    assert a.created == pytest.approx(b.created, abs=1e-9)


def _assert_same_calibration(a: ForceCalibration, b: ForceCalibration) -> None:
    da, db = a.to_dict(), b.to_dict()
    assert da.keys() == db.keys()
    for key, value in da.items():
        if isinstance(value, float):
            assert value == pytest.approx(db[key], rel=0, abs=1e-9), key
        else:
            assert value == db[key], key


@pytest.fixture(scope="module")
def written(tiled_server, tmp_path_factory):
    """A Z-LUT sweep and a force calibration in Tiled, and what the plans cached."""
    target = TiledTarget(
        uri=tiled_server.uri, api_key=tiled_server.api_key, source="embedded-running",
        data_dir=tiled_server.data_dir,
    )
    RE, _ = make_run_engine(session_metadata(sim_params=PARAMS), best_effort=False)
    writer = subscribe_tiled_writer(RE, target)
    with init_devices():
        mic = make_simulated_microscope(
            PARAMS, data_dir=target.detector_data_dir, tracking_workers=1,
            frame_rate_hz=50.0,  # light on a loaded machine: the tracker drops no frames
            instance="rebuildtest", name="microscope",
        )
    try:
        RE(bps.mv(mic.magnet_z, 1.0))
        RE(bps.wait_for([mic.tracker.find_beads]))
        refs = RE(find_reference_beads(mic.tracker)).plan_result
        assert len(refs) == 1
        uid_z = RE(zlut_sweep(
            mic, -1500, 2500, 200, frames_per_step=2, magnet_z_mm=1.0,
        )).plan_result
        uid_f = RE(force_calibration(
            mic, [1.5, 2.5, 3.5, 5.0], duration_s=3.0, settle_s=0.1, chunk_frames=50,
        )).plan_result
        lut = ZLUT.load(zlut_cache_path(mic.tracker.data_dir, uid_z))
        cal = ForceCalibration.load(calibration_cache_path(mic.tracker.data_dir, uid_f))
    finally:
        mic.close()
        assert writer.close(timeout=60)
    return target, Path(target.detector_data_dir), uid_z, uid_f, lut, cal


def test_results_rebuilt_from_tiled_alone(written, tiled_server, tmp_path):
    target, data_dir, uid_z, uid_f, lut, cal = written
    assert lut.source == uid_z and cal.source == uid_f
    side_files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    names = [p.name for p in side_files]
    assert f"zlut-{uid_z}.npz" in names and f"force-calibration-{uid_f}.json" in names
    assert any(n.endswith(".h5") for n in names)  # the force calibration's track table
    for path in side_files:
        path.unlink()
    assert not any(p.is_file() for p in data_dir.rglob("*"))

    client = tiled_server.client()
    _assert_same_zlut(zlut_of(client[uid_z]), lut)
    _assert_same_zlut(zlut_of(client[uid_z], from_images=True), lut)  # from the ROI images
    _assert_same_calibration(force_calibration_of(client[uid_f]), cal)

    # a new instrument loads both from the runs, caching them in its own data folder
    from bluesky import RunEngine

    RE = RunEngine(call_returns_result=True)
    with init_devices():
        mic = make_simulated_microscope(
            PARAMS, data_dir=tmp_path, tracking_workers=1, instance="rebuildload",
            name="microscope",
        )
    try:
        # the beads where the sweep saw them, and the reference beads the calibration used
        tracker_config = client[uid_f]["tracks"].metadata["configuration"]["microscope-tracker"]
        refs = tracker_config["data"]["microscope-tracker-reference_beads"]
        RE(bps.mv(
            mic.tracker.rois, _rois_of(client[uid_z]),
            mic.tracker.reference_beads, np.asarray(refs, np.int32),
        ))
        loaded = RE(load_zlut(mic, client[uid_z])).plan_result
        _assert_same_zlut(loaded, lut)
        assert RE(bps.rd(mic.tracker.zlut_uid)).plan_result == uid_z
        assert zlut_cache_path(tmp_path, uid_z).is_file()
        loaded_cal = RE(load_force_calibration(mic, client[uid_f])).plan_result
        _assert_same_calibration(loaded_cal, cal)
        assert RE(bps.rd(mic.force.calibration_file)).plan_result == str(
            calibration_cache_path(tmp_path, uid_f)
        )
    finally:
        mic.close()


def _rois_of(run):
    """The ROI table of a sweep, from its ``primary`` stream's bead layout."""
    from magscope_devices import BeadRois
    from magscope_plans._run_results import stream_layout

    layout = stream_layout(run["primary"], "zlut_images")
    return BeadRois(
        bead_id=layout.bead_ids.astype(np.int32), x0_px=layout.roi_x0_px.astype(np.int32),
        y0_px=layout.roi_y0_px.astype(np.int32),
    )
