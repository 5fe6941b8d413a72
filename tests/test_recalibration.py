"""Force calibrations recomputed from re-tracked crops, for real: a force_calibration run
recorded with ROI crops on the simulated instrument into a real Tiled, its crops
re-tracked (serially and on a LocalCluster) and the plan's analysis run on them again;
the result goes back to Tiled as a calibration run the instrument can load."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from crop_runs import PARAMS
from magscope_devices import make_simulated_microscope
from magscope_plans import find_reference_beads, force_calibration, zlut_sweep
from magscope_plans._force_calibration import forces_at_height
from magscope_session import EmbeddedTiled, runs
from magscope_session._document_writer import SpoolingTiledWriter
from magscope_session._recalibration import recalibrate, write_recalibration

pytestmark = pytest.mark.system

HEIGHTS = (1.5, 3.0, 5.0)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """An embedded Tiled with a Z-LUT run and a force calibration recorded with ROI
    crops; yields (tiled, zlut uid, calibration uid)."""
    folder = tmp_path_factory.mktemp("recalibration")
    with EmbeddedTiled(folder / "tiled", port=0) as tiled:
        RE = RunEngine(call_returns_result=True)
        writer = SpoolingTiledWriter(tiled.uri, tiled.api_key, folder / "spool",
                                     batch_size=50)
        RE.subscribe(writer)
        with init_devices():
            mic = make_simulated_microscope(
                PARAMS, data_dir=tiled.detector_data_dir, instance="recalibration",
                tracking_workers=1, frame_rate_hz=100.0, name="mic")
        try:
            RE(bps.mv(mic.magnet_z, 2.0))
            RE(bps.wait_for([mic.tracker.find_beads]))
            RE(find_reference_beads(mic.tracker))
            zlut_uid = RE(zlut_sweep(mic, -2000, 7000, 100, frames_per_step=2,
                                     magnet_z_mm=1.0)).run_start_uids[0]
            cal_uid = RE(force_calibration(mic, list(HEIGHTS), duration_s=3.0, settle_s=0.1,
                                           chunk_frames=50, video="roi_crops")).plan_result
            mode = RE(bps.rd(mic.video.mode)).plan_result
        finally:
            mic.close()
            assert writer.close(timeout=120) and writer.unsent_runs() == 0
        assert str(mode) != "roi_crops", "the plan did not put the video mode back"
        yield tiled, zlut_uid, cal_uid


def test_a_calibration_is_recomputed_from_its_re_tracked_crops(calibrated):
    tiled, zlut_uid, cal_uid = calibrated
    run = tiled.client()[cal_uid]
    table = run["calibration"].read()
    start = run.metadata["start"]

    # the frames each height's forces came from are in the run: the plan's own analysis
    # on the stored tracks of those frames gives the stream's forces exactly
    tracks = runs.read_tracks(run)
    for i in range(len(HEIGHTS)):
        first, last = int(table["calibration-frame_first"][i]), int(table["calibration-frame_last"][i])
        rows = (tracks.frame_index >= first) & (tracks.frame_index <= last)
        assert rows.sum() == last - first + 1 == 300
        values = forces_at_height(
            {"x_nm": tracks.x_nm[rows], "y_nm": tracks.y_nm[rows], "z_nm": tracks.z_nm[rows],
             "bead_id": tracks.layout.bead_ids, "frame_index": tracks.frame_index[rows]},
            np.asarray(start["bead_ids"]), np.asarray(start["reference_bead_ids"]),
            fs_hz=start["frame_rate_hz"], exposure_s=start["exposure_s"],
            radius_nm=start["bead_radius_nm"], viscosity_pa_s=start["viscosity_pa_s"],
            axis="y")
        assert np.array_equal(values["force_psd_pn"], np.asarray(table["calibration-force_psd_pn"][i]),
                              equal_nan=True)

    # re-tracked with the same Z-LUT: the forces are the live ones (the same kernel on
    # the same crops gives the same positions, and the plan's analysis the same forces)
    original = runs.force_calibration_of(run)
    (serial,) = recalibrate(tiled.uri, [cal_uid], zlut_run=zlut_uid, api_key=tiled.api_key,
                            serial=True, chunk_rows=100)
    live = np.array([np.asarray(f, float) for f in table["calibration-force_psd_pn"]])
    again = np.array([h["force_psd_pn"] for h in serial.per_height])
    assert again.shape == live.shape == (len(HEIGHTS), len(start["bead_ids"]))
    rel = np.abs(again / live - 1)
    assert np.nanmax(rel) < 1e-6, rel
    assert abs(serial.calibration.f0_pn / original.f0_pn - 1) < 1e-6, (
        serial.calibration.f0_pn, original.f0_pn)
    assert np.isfinite(serial.calibration.reference_radius_nm)
    print(f"re-tracked forces vs live: median {100 * np.nanmedian(rel):.2f} %, max "
          f"{100 * np.nanmax(rel):.2f} %; f0 {serial.calibration.f0_pn:.3f} pN vs "
          f"{original.f0_pn:.3f} pN live")

    # on a cluster: the same numbers exactly
    (clustered,) = recalibrate(tiled.uri, [cal_uid], zlut_run=zlut_uid,
                               api_key=tiled.api_key, workers=1, chunk_rows=100)
    for key in ("f0_pn", "a", "l1_mm", "l2_mm", "bead_scale", "bead_radius_nm",
                "reference_radius_nm"):
        assert np.array_equal(getattr(clustered.calibration, key),
                              getattr(serial.calibration, key), equal_nan=True), key

    # back to Tiled: a run the instrument reads as a calibration, naming its source
    writer = SpoolingTiledWriter(tiled.uri, tiled.api_key, tiled.spool_dir, batch_size=50)
    new_uid = write_recalibration(writer, serial)
    assert writer.close(timeout=60) and writer.unsent_runs() == 0
    new_run = tiled.client()[new_uid]
    assert (new_run.metadata["start"]["source_run"],
            new_run.metadata["start"]["zlut_run"]) == (cal_uid, zlut_uid)
    read_back = runs.force_calibration_of(new_run)
    assert read_back.source == new_uid
    for key in ("f0_pn", "a", "l1_mm", "l2_mm", "min_height_mm", "max_height_mm",
                "bead_ids", "bead_scale", "bead_radius_nm", "reference_radius_nm"):
        assert np.allclose(getattr(read_back, key), getattr(serial.calibration, key),
                           rtol=1e-12, equal_nan=True), key
    assert np.allclose(new_run["calibration"].read()["calibration-force_psd_pn"][1],
                       serial.per_height[1]["force_psd_pn"], equal_nan=True)


def test_only_a_calibration_run_is_recalibrated(calibrated):
    tiled, zlut_uid, _ = calibrated
    with pytest.raises(ValueError, match="'zlut_sweep' run, not a force_calibration"):
        recalibrate(tiled.uri, [zlut_uid], zlut_run=zlut_uid, api_key=tiled.api_key,
                    serial=True)


def test_magscope_reanalyse_recomputes_a_calibration_run(calibrated):
    """The command line: a force_calibration run given to `magscope reanalyse` is
    re-tracked and its calibration recomputed; both go to Tiled as new runs."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    tiled, zlut_uid, cal_uid = calibrated
    done = subprocess.run(
        [str(Path(sys.executable).parent / "magscope"), "reanalyse", "--run", cal_uid,
         "--zlut-run", zlut_uid, "--serial", "--chunk-rows", "150",
         "--data-dir", str(tiled.data_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    found = re.search(r"force calibration recomputed: F\(z\) f0 = ([\d.]+) \+/- [\d.]+ pN "
                      r"\(was ([\d.]+) pN\).*new run (\S+)", done.stdout)
    assert found, done.stdout
    new_run = tiled.client()[found.group(3)]
    assert new_run.metadata["start"]["plan_name"] == "recalibrate"
    assert abs(runs.force_calibration_of(new_run).f0_pn - float(found.group(1))) < 1e-3
