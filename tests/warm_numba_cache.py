"""Compile the numba kernels into their on-disk cache once, before the tests start.

``make test`` runs this first. Without it, on a fresh clone every process that tracks or
renders (the test workers, each tracking worker, each camera process) compiles the same
kernels at the same time: 30-60 s of CPU per dtype, several times over on two cores.
Prints the seconds each step took (about 1 s in all when the cache is warm).
"""

from __future__ import annotations

import time

import numpy as np

from magscope_devices.sim import Renderer, SimParams
from magscope_tracking._worker import warm_up_kernels


def main() -> None:
    for dtype in (np.uint8, np.uint16):
        t0 = time.perf_counter()
        warm_up_kernels(np.dtype(dtype))
        print(f"tracking kernels, {np.dtype(dtype).name}: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    for bit_depth in (8, 16):
        Renderer(SimParams(bit_depth=bit_depth)).warmup()
    print(f"simulator's renderer: {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
