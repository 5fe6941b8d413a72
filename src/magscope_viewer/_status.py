"""The health line of the status bar, as text (no Qt): connection, rates, counters."""

from __future__ import annotations

import math
import time

from ._live_source import Health


class RateMeter:
    """Rate (1/s) of a growing counter, from the change between two samples at least
    ``min_interval_s`` apart (NaN until there are two)."""

    def __init__(self, min_interval_s: float = 0.5) -> None:
        self.min_interval_s = min_interval_s
        self._sample: tuple[float, int] | None = None
        self.rate = float("nan")

    def update(self, count: int, now: float | None = None) -> float:
        """Feed the counter's value (a negative one resets); returns the rate (1/s)."""
        now = time.monotonic() if now is None else now
        if count < 0:
            self._sample, self.rate = None, float("nan")
            return self.rate
        if self._sample is None or count < self._sample[1]:
            self._sample = (now, count)
            return self.rate
        t0, c0 = self._sample
        if now - t0 >= self.min_interval_s:
            self.rate = (count - c0) / (now - t0)
            self._sample = (now, count)
        return self.rate


def status_text(instance: str, health: Health, frame_rate_hz: float, display_hz: float) -> str:
    """One line: instance and connection, camera frame rate (frames/s), late frames,
    frames tracked and dropped, tracker latency p99 (ms), display refresh rate (Hz)."""
    parts = [f"{instance}: {health.state}"]
    if health.state == "connected":
        rate = "–" if math.isnan(frame_rate_hz) else f"{frame_rate_hz:.0f}"
        parts.append(f"camera {rate} frames/s, {health.frames_late} late")
        if health.tracker_attached:
            p99 = health.latency_p99_s * 1e3
            parts.append(
                f"tracked {health.frames_tracked}, dropped {health.frames_dropped}, "
                f"latency p99 {p99:.1f} ms"
            )
        else:
            parts.append("no tracker")
    if not math.isnan(display_hz):
        parts.append(f"display {display_hz:.0f} Hz")
    return "  ·  ".join(parts)
