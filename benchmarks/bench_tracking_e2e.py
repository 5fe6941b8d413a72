"""End to end: the simulated camera at 100 frames/s with 50 beads, tracked for 60 s.

One command: ``.venv/bin/python benchmarks/bench_tracking_e2e.py [seconds]``. Prints the
frames acquired, tracked and dropped, the latency from frame timestamp to track row
(p50, p99) and the XY error of the tracked positions against the simulator's truth.
"""

from __future__ import annotations

import sys
import time

import bluesky.plan_stubs as bps
import numpy as np
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope, rois_from_centres
from magscope_devices.sim.world import SimParams


def main(seconds: float = 60.0) -> int:
    import tempfile

    RE = RunEngine()
    params = SimParams(n_tethered=46, n_reference=4, seed=2)
    with init_devices():
        mic = make_simulated_microscope(params, data_dir=tempfile.mkdtemp(), name="microscope")
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        while mic.camera.process.ring.count < 2:
            time.sleep(0.01)
        _, _, index = mic.camera.latest_frame()
        truth = mic.truth.frame(index)
        ids = np.arange(params.n_beads)
        RE(bps.mv(mic.tracker.rois, rois_from_centres(
            ids, truth["x_nm"] / params.nm_per_px, truth["y_nm"] / params.nm_per_px, 64
        )))
        time.sleep(2.0)
        service = mic.tracker.service
        h0 = service.health()
        ring = service.track_ring
        k = ring.count
        t0 = time.monotonic()
        errors = []
        p50, p99 = [], []
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            batch = ring.rows_since(k)
            k = batch.next_index
            for j in np.flatnonzero(batch.tracked)[::10]:
                rows = batch.rows[j, : batch.n_beads[j]]
                tr = mic.truth.frame(int(batch.frame_index[j]))
                errors.append(rows["x_nm"] - tr["x_nm"][rows["bead_id"]])
            h = service.health()
            p50.append(h.latency_p50_s)
            p99.append(h.latency_p99_s)
        h1 = service.health()
        acquired = h1.frames_acquired - h0.frames_acquired
        tracked = h1.frames_tracked - h0.frames_tracked
        dropped = h1.frames_dropped - h0.frames_dropped
        err = np.concatenate(errors) / params.nm_per_px
        print(f"simulated camera 100 frames/s, {params.n_beads} beads, 64 px ROIs, "
              f"{service.n_workers} tracking workers, {seconds:.0f} s")
        print(f"  frames acquired {acquired}, tracked {tracked}, dropped {dropped}, "
              f"camera late {mic.camera.process.control['frames_late']}")
        print(f"  ROIs tracked per second: {tracked * params.n_beads / seconds:.0f}")
        print(f"  latency frame -> track row: p50 {1e3 * np.nanmedian(p50):.1f} ms, "
              f"p99 {1e3 * np.nanmedian(p99):.1f} ms (median of 1 s windows)")
        print(f"  XY error vs truth (x, no Z-LUT): {np.sqrt(np.nanmean(err**2)):.4f} px RMS, "
              f"bias {np.nanmean(err):+.4f} px")
        return 0 if dropped == 0 else 1
    finally:
        mic.close()


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0))
