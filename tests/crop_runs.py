"""Runs recorded with ROI crops on the simulated instrument into a Tiled server, and a
Z-LUT run: the input of the re-analysis test and ``benchmarks/bench_reanalysis.py``."""

from __future__ import annotations

from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_plans import TrackRecorder, with_video_mode, zlut_sweep
from magscope_session._document_writer import SpoolingTiledWriter

PARAMS = SimParams(seed=5, n_tethered=4, n_reference=2, width_px=448, height_px=320,
                   contour_nm_range=(2000.0, 3000.0))


def record_crop_runs(tiled, folder: Path, *, frames: int, heights=(2.0, 4.0),
                     instance: str = "reanalysis", every_n: int | None = None
                     ) -> tuple[str, list[str]]:
    """A Z-LUT sweep and one record of ``frames`` frames with ROI crops per magnet height
    (mm), written to ``tiled`` (an EmbeddedTiled); with ``every_n``, then one more record
    with every ``every_n``-th whole frame (its uid last). Returns (Z-LUT run uid, run
    uids)."""
    RE = RunEngine(call_returns_result=True)
    writer = SpoolingTiledWriter(tiled.uri, tiled.api_key, folder / "spool", batch_size=50)
    RE.subscribe(writer)
    with init_devices():
        mic = make_simulated_microscope(
            PARAMS, data_dir=tiled.detector_data_dir, instance=instance,
            tracking_workers=1, frame_rate_hz=100.0, name="mic")
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        RE(bps.wait_for([mic.tracker.find_beads]))
        zlut_uid = RE(zlut_sweep(mic, -2000, 7000, 100, frames_per_step=2,
                                 magnet_z_mm=1.0)).run_start_uids[0]
        uids = []
        for height in heights:
            RE(bps.mv(mic.magnet_z, height))
            recorder = TrackRecorder(mic.tracker, chunk_frames=40, video=mic.video)

            @bpp.stage_decorator([mic])
            @bpp.run_decorator(md={"sample": "reanalysis"})
            def record(rec: TrackRecorder = recorder):
                yield from with_video_mode(rec.record(frames), mic, "roi_crops")

            uids.append(RE(record()).run_start_uids[0])
        if every_n is not None:
            recorder = TrackRecorder(mic.tracker, chunk_frames=40, video=mic.video)

            @bpp.stage_decorator([mic])
            @bpp.run_decorator(md={"sample": "reanalysis frames"})
            def record_frames(rec: TrackRecorder = recorder):
                yield from with_video_mode(rec.record(frames), mic, "frames_every_n",
                                           every_n=every_n)

            uids.append(RE(record_frames()).run_start_uids[0])
    finally:
        mic.close()
        if not writer.close(timeout=120) or writer.unsent_runs():
            raise RuntimeError("the recorded runs did not reach Tiled whole")
    return zlut_uid, uids
