"""Sustained frame rate of the simulated camera process (world + render + frame ring).

One command: ``.venv/bin/python benchmarks/bench_camera.py``. The camera process runs on
one core; it is asked for far more frames than it can make, and the frames it actually
puts into the ring per second are its ceiling. Printed for 20 and 50 beads, with the
ratio against the 100 frames/s the instrument needs, and the same measurement at the
real 100 frames/s schedule (frames acquired vs frames late).
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time

import numpy as np

from magscope_devices._acquisition import AcquisitionConfig, AcquisitionProcess
from magscope_devices.sim.frame_source import SIM_INPUTS_DTYPE, TRUTH_DTYPE, SimFrameSource
from magscope_devices.sim.world import SimParams
from magscope_ipc.rings import SlotRing
from magscope_ipc.shm import SharedRecord, segment_name

TARGET_FPS = 100.0


def measure(n_beads: int, asked_fps: float, seconds: float, repeats: int) -> tuple[float, float]:
    """Median frames/s put in the ring, and median fraction of scheduled frames that were late."""
    params = SimParams(n_tethered=n_beads - 4, n_reference=4, seed=3)
    instance = f"bench{os.getpid()}n{n_beads}f{int(asked_fps)}"
    inputs = SharedRecord.create(segment_name(instance, "siminputs"), SIM_INPUTS_DTYPE)
    inputs["magnet_z_mm"] = 3.0
    truth = SlotRing.create(segment_name(instance, "truth"), 4096, (params.n_beads,), TRUTH_DTYPE)
    process = AcquisitionProcess(
        functools.partial(SimFrameSource, params, inputs.name, truth.name),
        (params.height_px, params.width_px), np.uint8, 8,
        AcquisitionConfig(instance=instance, frame_rate_hz=asked_fps, exposure_s=0.0009),
    )
    rates, late = [], []
    try:
        process.start()
        ctl = process.control
        time.sleep(1.0)
        for _ in range(repeats):
            n0, l0, t0 = ctl["frames_acquired"], ctl["frames_late"], time.monotonic()
            time.sleep(seconds)
            n1, l1, t1 = ctl["frames_acquired"], ctl["frames_late"], time.monotonic()
            rates.append((n1 - n0) / (t1 - t0))
            late.append((l1 - l0) / max(1, (n1 - n0) + (l1 - l0)))
    finally:
        process.stop()
        for shared in (inputs, truth):
            shared.unlink()
    return statistics.median(rates), statistics.median(late)


def main() -> int:
    repeats = int(os.environ.get("BENCH_REPEATS", "5"))
    print(f"Simulated camera, 1024 x 768 px, 8 bit; median of {repeats} x 2 s windows")
    print(f"{'beads':>6} {'ceiling fps':>12} {'x target':>9} {'at 100 fps: late':>18}")
    for n_beads in (20, 50):
        ceiling, _ = measure(n_beads, 1000.0, 2.0, repeats)
        at_target, late = measure(n_beads, TARGET_FPS, 2.0, repeats)
        print(
            f"{n_beads:>6} {ceiling:>12.1f} {ceiling / TARGET_FPS:>9.2f} "
            f"{100 * late:>16.2f} %  ({at_target:.1f} fps acquired)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
