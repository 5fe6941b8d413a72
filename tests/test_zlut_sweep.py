"""The Z-LUT sweep plan on the simulated microscope, scored against ground truth."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope, rois_from_centres
from magscope_devices.sim.world import SimParams
from magscope_plans._zlut import zlut_cache_path, zlut_sweep
from magscope_tracking import ZLUT
from magscope_tracking.track_file import read_track_file
from tracking_sim import true_rois, truth_now

pytestmark = pytest.mark.system

NM_PER_PX = 100.0


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def microscope(RE, tmp_path_factory):
    with init_devices():
        mic = make_simulated_microscope(
            SimParams(seed=5), data_dir=tmp_path_factory.mktemp("zlut"), instance="zluttest",
            tracking_workers=2, name="microscope",
        )
    yield mic
    mic.close()


def _select(RE, mic, ids):
    import time

    while mic.camera.process.ring.count < 2:
        time.sleep(0.01)
    RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic), ids, nm_per_px=NM_PER_PX)))


def test_sweep_refuses_bad_input_before_moving(RE, microscope):
    from bluesky.utils import FailedStatus  # noqa: F401

    RE(bps.mv(microscope.tracker.rois, rois_from_centres([], [], [], 64)))
    focus0 = RE(bps.rd(microscope.focus)).plan_result
    with pytest.raises(ValueError, match="no beads selected"):
        RE(zlut_sweep(microscope, -1000, 1000, 100))
    _select(RE, microscope, [0])
    with pytest.raises(ValueError, match="outside the focus limits"):
        RE(zlut_sweep(microscope, -90_000, 0, 1000))
    with pytest.raises(ValueError, match="at least 5"):
        RE(zlut_sweep(microscope, 0, 200, 100))
    with pytest.raises(ValueError, match=r"beads \[7\] are not in the tracker's ROI table"):
        RE(zlut_sweep(microscope, -1000, 1000, 100, beads=[7]))
    assert RE(bps.rd(microscope.focus)).plan_result == focus0


def test_sweep_builds_loads_and_tracks_z_against_truth(RE, microscope):
    ids = [0, 1, 2, 3, 20]  # four tethered beads and a reference bead
    _select(RE, microscope, ids)
    docs = []
    uid = RE(
        zlut_sweep(microscope, -3000, 3000, 100, frames_per_step=3, magnet_z_mm=1.0),
        lambda n, d: docs.append((n, d)),
    ).plan_result
    start = next(d for n, d in docs if n == "start")
    assert start["uid"] == uid and start["plan_name"] == "zlut_sweep"
    path = zlut_cache_path(microscope.tracker.data_dir, uid)
    lut = ZLUT.load(path)
    assert list(lut.bead_ids) == ids and lut.n_planes == 61 and lut.source == uid
    zlut_event = next(
        d for n, d in docs
        if n == "event" and "zlut-profiles" in d["data"]
    )
    assert np.asarray(zlut_event["data"]["zlut-profiles"]).shape == lut.profiles.shape
    # every step's ROI images are in the run, with the beads' layout in the configuration
    steps = [d for n, d in docs if n == "event" and "zlut_images-images" in d["data"]]
    assert len(steps) == 61
    assert np.asarray(steps[0]["data"]["zlut_images-images"]).shape == (5, 3, 64, 64)
    descriptor = next(
        d for n, d in docs if n == "descriptor" and d["name"] == "primary"
    )
    config = descriptor["configuration"]["zlut_images"]["data"]
    assert list(config["zlut_images-bead_ids"]) == ids
    assert config["zlut_images-roi_size_px"] == 64
    assert config["zlut_images-nm_per_px"] == NM_PER_PX
    assert RE(bps.rd(microscope.tracker.zlut_path)).plan_result == str(path)
    assert RE(bps.rd(microscope.tracker.zlut_uid)).plan_result == uid
    assert RE(bps.rd(microscope.focus)).plan_result == start["focus_start_nm"]
    # now track at high force, with the focus 1 um off where the sweep started
    RE(bps.mv(microscope.magnet_z, 1.0, microscope.focus, start["focus_start_nm"] + 1000.0))
    RE(bps.mv(microscope.tracker.window_frames, 100))
    track_docs = []
    RE(bp.count([microscope.tracker]), lambda n, d: track_docs.append((n, d)))
    resource = next(
        d for n, d in track_docs
        if n == "stream_resource" and d["data_key"] == "microscope-tracker-z_nm"
    )
    tracks = read_track_file(resource["uri"].removeprefix("file://localhost"))
    descriptor = next(d for n, d in track_docs if n == "descriptor")
    config = descriptor["configuration"]["microscope-tracker"]["data"]
    assert list(config["microscope-tracker-bead_ids"]) == sorted(ids)
    assert config["microscope-tracker-zlut_uid"] == uid
    dz_true = np.array([
        microscope.truth.frame(int(i))["z_nm"][ids] - microscope.truth.frame(int(i))["focal_plane_nm"][0]
        for i in tracks["frame_index"]
    ])
    tracked = tracks["status"] == 1  # frames the service dropped (load) have NaN rows
    assert tracked.mean() > 0.9
    err = (tracks["z_nm"] - dz_true)[tracked]  # per bead: a constant offset + noise
    assert np.all(np.isfinite(err))
    err -= err.mean(axis=0)
    rms = float(np.sqrt(np.mean(err**2)))
    assert rms < 10.0, f"z error {rms:.1f} nm RMS against the simulator's truth"
    RE(bps.mv(microscope.magnet_z, 8.0))
