"""Travel time of the simulated axes against their velocity.

One command: ``.venv/bin/python benchmarks/bench_motors.py``. A move of ``d`` at velocity
``v`` should take ``d / v``; the figure is the median measured time of repeated moves and
its ratio to ``d / v``. The baseline measured in the same run is ``asyncio.sleep(d / v)``
on the same loop: what the event loop's scheduling alone costs.
(The tests check that an axis travels and arrives; this is where the timing lives.)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from ophyd_async.core import init_devices

from magscope_devices import FocusStage, MagnetRotation, MagnetZ


async def _timed(coro) -> float:
    t0 = time.perf_counter()
    await coro
    return time.perf_counter() - t0


async def measure(repeats: int) -> list[tuple[str, float, float, float, str]]:
    async with init_devices():
        magnet_z = MagnetZ(initial=8.0, velocity=20.0)
        rotation = MagnetRotation(velocity=50.0)
        focus = FocusStage(initial=1000.0)
    cases = [
        (magnet_z, 8.0, 6.0, "mm"),
        (rotation, 0.0, 25.0, "turns"),
        (focus, 1000.0, 3000.0, "nm"),
    ]
    rows = []
    for axis, start, end, units in cases:
        velocity = await axis.velocity.get_value()
        ideal = abs(end - start) / velocity
        moves, sleeps = [], []
        for _ in range(repeats):
            await axis.set(start)
            moves.append(await _timed(axis.set(end)))
            sleeps.append(await _timed(asyncio.sleep(ideal)))
        rows.append(
            (axis.name, ideal, statistics.median(moves), statistics.median(sleeps), units)
        )
    return rows


def main() -> int:
    repeats = int(os.environ.get("BENCH_REPEATS", "7"))
    print(f"Simulated axes: median of {repeats} moves")
    print(f"{'axis':>16} {'d/v (s)':>9} {'move (s)':>9} {'x d/v':>7} {'sleep(d/v) (s)':>15}")
    for name, ideal, move, sleep, _units in asyncio.run(measure(repeats)):
        print(f"{name:>16} {ideal:>9.3f} {move:>9.3f} {move / ideal:>7.2f} {sleep:>15.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
