"""Make docs/images/viewer-live.png: the live viewer on the simulated microscope.

Run from the repository root (offscreen Qt, no screen needed)::

    QT_QPA_PLATFORM=offscreen python docs/images/viewer_screenshot.py [--zlut]

It starts the simulated microscope (instance ``viewer-shot``), puts ROIs on every bead,
optionally sweeps a Z-LUT (``--zlut``) so z is tracked and turns the bead locks on, opens the viewer
window on the same instance, lets it run for a few seconds and saves the grab.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import numpy as np
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope, rois_from_centres
from magscope_devices.sim.world import SimParams


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zlut", action="store_true", help="sweep a Z-LUT first (z traces)")
    parser.add_argument("--out", default="docs/images/viewer-live.png")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()

    from PyQt5 import QtWidgets

    from magscope_viewer import LiveSource, ViewerWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    RE = RunEngine(call_returns_result=True)
    with tempfile.TemporaryDirectory() as data_dir:
        with init_devices():
            mic = make_simulated_microscope(
                SimParams(seed=3), data_dir=data_dir, instance="viewer-shot",
                tracking_workers=1, name="microscope",
            )
        try:
            RE(bps.mv(mic.magnet_z, 2.0))
            _, _, index = mic.camera.latest_frame()
            truth = mic.truth.frame(index)
            ids = np.arange(len(truth))
            nm_per_px = 100.0
            RE(bps.mv(mic.tracker.rois, rois_from_centres(
                ids, truth["x_nm"] / nm_per_px, truth["y_nm"] / nm_per_px, 64)))
            reference = [10]
            if args.zlut:
                from magscope_plans import find_reference_beads, lock_focus, lock_xy, zlut_sweep

                RE(zlut_sweep(mic, -3000, 3000, 100, frames_per_step=3))
                # the bead locks on: the axes panel shows them locked
                reference = RE(find_reference_beads(mic.tracker)).plan_result
                RE(lock_focus(mic))
                RE(lock_xy(mic))
            source = LiveSource("viewer-shot")
            window = ViewerWindow(source, selected=list(range(10)), reference=reference[:3])
            window.resize(1500, 900)
            window.show()
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                app.processEvents()
                time.sleep(0.01)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            for _ in range(30):
                window.refresh()
                app.processEvents()
            print(f"refresh + paint: {(time.perf_counter() - t0) / 30 * 1e3:.1f} ms on average")
            window.grab().save(args.out)
            print(f"wrote {args.out}: {window.status.text()}")
            window.close()
        finally:
            mic.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
