"""A camera that plays back pre-rendered simulator frames in a loop (for benchmarks).

The simulator renders a 1280 x 1024 frame with 100 beads in several ms, shot noise
included: at 200 frames/s it takes more than a core of this 2-core machine by itself,
which a real camera does not (its frames come from the sensor). :class:`LoopedFrames`
plays back ``render_frames``' frames instead, so a benchmark measures what it is about
(tracking, recording) and not the renderer. It runs in the camera process: the class is
pickled by reference, so this module must be importable there (the benchmarks folder is
on ``sys.path`` when a benchmark runs as a script; the camera process inherits it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def render_frames(params, n_frames: int, path: Path, *, fps: float = 200.0,
                  magnet_z_mm: float = 2.0) -> dict[str, np.ndarray]:
    """Render ``n_frames`` consecutive frames (``fps`` apart) of the world ``params`` to the
    .npy file ``path``; returns the truth of the first frame (x_nm, y_nm per bead)."""
    from magscope_devices.sim import Renderer, SimWorld

    world = SimWorld(params)
    renderer = Renderer(params)
    frames = np.lib.format.open_memmap(
        path, mode="w+", dtype=renderer.dtype, shape=(n_frames, *renderer.shape)
    )
    first: dict[str, np.ndarray] = {}
    for i in range(n_frames):
        truth = world.advance(1000.0 + i / fps, params.exposure_s, magnet_z_mm, 0.0, 0.0)
        renderer.render(truth, frames[i])
        if i == 0:
            first = {"x_nm": np.array(truth.x_nm), "y_nm": np.array(truth.y_nm)}
    frames.flush()
    del frames
    return first


class LoopedFrames:
    """A frame source (:class:`magscope_devices._acquisition.FrameSource`) that copies the
    frames of the .npy file ``path`` into the ring one after the other, in a loop."""

    def __init__(self, path: str, bit_depth: int) -> None:
        self.frames = np.load(path, mmap_mode="r")
        self.frames = np.ascontiguousarray(self.frames)  # in memory: no disk reads per frame
        self.sensor_shape = tuple(int(v) for v in self.frames.shape[1:])
        self.dtype = self.frames.dtype
        self.bit_depth = bit_depth
        self.n = 0

    def grab(self, t_s: float, exposure_s: float, gain: float, out: np.ndarray) -> None:
        out[...] = self.frames[self.n % len(self.frames)]
        self.n += 1

    def close(self) -> None:
        pass
