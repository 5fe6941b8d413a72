"""Small frame sources for testing the acquisition loop apart from the simulator."""

from __future__ import annotations

import time

import numpy as np


class CountingSource:
    """Frames whose every pixel holds the frame's sequence number (mod 256) plus noise-free rows.

    Lets a test check that each captured frame is the one the ring and the file say it is.
    """

    def __init__(self, height: int = 48, width: int = 64, grab_delay_s: float = 0.0) -> None:
        self.sensor_shape = (height, width)
        self.dtype = np.dtype(np.uint8)
        self.bit_depth = 8
        self.grab_delay_s = grab_delay_s
        self.n = 0
        self.rows = (np.arange(height, dtype=np.uint8)[:, None] * np.ones((1, width), np.uint8))

    def grab(self, t_s: float, exposure_s: float, gain: float, out: np.ndarray) -> None:
        if self.grab_delay_s:
            time.sleep(self.grab_delay_s)
        out[...] = self.rows
        out[0, :] = self.n % 256
        self.n += 1

    def close(self) -> None:
        pass


class FailingSource:
    """A camera that cannot be opened."""

    def __init__(self) -> None:
        raise OSError("no camera found on the bus (simulated failure)")


class StallingSource(CountingSource):
    """A counting camera whose host stalls once: frame ``stall_at`` takes ``stall_s`` s."""

    def __init__(self, stall_at: int = 20, stall_s: float = 0.06) -> None:
        super().__init__()
        self.stall_at = stall_at
        self.stall_s = stall_s

    def grab(self, t_s: float, exposure_s: float, gain: float, out: np.ndarray) -> None:
        if self.n == self.stall_at:
            time.sleep(self.stall_s)
        super().grab(t_s, exposure_s, gain, out)
