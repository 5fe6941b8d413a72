"""Frame time of the simulated camera: world.advance + render (with noise), one core.

Run:  .venv/bin/python benchmarks/bench_render.py [--frames N] [--cpu K]

For 20 and 50 beads (4 of them reference beads) on the default 1024 x 768, 8-bit sensor
it prints the median time per frame of ``SimWorld.advance`` + ``Renderer.render`` and the
frames/s, with the magnet fixed and with the magnet moving every frame (force ramp: the
WLC is re-solved each frame), then the same for the plain-NumPy ``ReferenceRenderer``
(fewer frames) and the speed ratio. Numba runs single-threaded (NUMBA_NUM_THREADS=1);
``--cpu K`` also pins the process to CPU K.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from magscope_devices.sim import ReferenceRenderer, Renderer, SimParams, SimWorld  # noqa: E402


def _frame_times(world, renderer, out, n_frames, moving, exposure_s=0.005, dt=0.01):
    times = np.empty(n_frames)
    start = world.t0_s + 1000.0 if world.t0_s is not None else 0.0
    for i in range(n_frames):
        magnet = 4.0 + (0.001 * i if moving else 0.0)
        t0 = time.perf_counter()
        truth = world.advance(start + i * dt, exposure_s, magnet, 0.0, 3000.0)
        renderer.render(truth, out)
        times[i] = time.perf_counter() - t0
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400, help="frames per fast measurement")
    ap.add_argument("--ref-frames", type=int, default=6, help="frames per NumPy measurement")
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    print("simulated camera: 1024 x 768, 8 bit, advance + render + noise, single thread")
    print(f"{'beads':>5} {'magnet':>7} {'renderer':>9} {'median ms':>10} {'frames/s':>9}")
    for n_beads in (20, 50):
        params = SimParams(n_tethered=n_beads - 4, n_reference=4, seed=1)
        fast = Renderer(params)
        t0 = time.perf_counter()
        fast.warmup()
        warm = time.perf_counter() - t0
        out = np.empty(fast.shape, fast.dtype)
        med = {}
        for moving in (False, True):
            world = SimWorld(params)
            _frame_times(world, fast, out, 20, moving)  # settle caches
            t = np.median(_frame_times(world, fast, out, args.frames, moving))
            med[moving] = t
            label = "moving" if moving else "fixed"
            print(f"{n_beads:>5} {label:>7} {'numba':>9} {1e3 * t:>10.2f} {1 / t:>9.0f}")
        world = SimWorld(params)
        ref = ReferenceRenderer(params)
        t_ref = np.median(_frame_times(world, ref, out, args.ref_frames, False))
        print(f"{n_beads:>5} {'fixed':>7} {'numpy':>9} {1e3 * t_ref:>10.2f} {1 / t_ref:>9.1f}")
        print(
            f"      numba is {t_ref / med[False]:.0f}x faster than the NumPy reference "
            f"(warm-up/compile {warm:.1f} s)"
        )


if __name__ == "__main__":
    main()
