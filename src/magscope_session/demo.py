"""The demo experiment on the simulated microscope, written to Tiled.

Magnets to a height, a focus scan with the camera, a count at two magnet heights:
three runs. Run it with ``magscope demo`` (or ``make demo``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
from ophyd_async.core import init_devices

from magscope_devices.microscope import make_simulated_microscope
from magscope_devices.ownership import instance_from_env
from magscope_devices.sim.world import SimParams
from magscope_plans.basic import count_at_heights, focus_scan

from .setup import make_run_engine, session_metadata, subscribe_tiled_writer
from .tiled_server import DEFAULT_PORT, resolve_tiled


@dataclass(frozen=True)
class DemoResult:
    """What the demo made: the run uids, where they are, and how to read them."""

    uids: list[str]
    uri: str
    api_key: str | None
    data_dir: Path
    seconds: float

    def read_back_code(self) -> str:
        """The lines of Python that read the demo's runs back from Tiled."""
        key = f", api_key={self.api_key!r}" if self.api_key else ""
        return (
            "from tiled.client import from_uri\n"
            f"run = from_uri({self.uri!r}{key})[{self.uids[-1]!r}]\n"
            'frames = run["primary"]["microscope-camera"].read()  # (5, 1, 768, 1024) uint8\n'
            "x = run[\"primary\"][\"microscope-tracker-x_nm\"].read()  # (5, 10, n_beads) nm"
        )


def _result(outcome: Any) -> Any:
    """The plan's return value (the RunEngine is made with ``call_returns_result=True``)."""
    return outcome.plan_result


def run_demo(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    port: int = DEFAULT_PORT,
    params: SimParams | None = None,
    sample: str = "demo DNA tethers",
    out: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo experiment; start (and afterwards stop) the embedded Tiled if needed."""
    t0 = time.monotonic()
    params = params or SimParams()
    with resolve_tiled(data_dir, port=port) as target:
        out(f"Tiled: {target.uri} ({target.source}), data in {target.data_dir}")
        RE, _ = make_run_engine(session_metadata(sample=sample, sim_params=params))
        writer = subscribe_tiled_writer(RE, target)
        with init_devices():
            microscope = make_simulated_microscope(
                params, data_dir=target.detector_data_dir, instance=instance_from_env(),
                name="microscope",
            )
        try:
            out("1. Magnets to 5 mm; select the beads in the camera image for tracking")
            RE(bps.mv(microscope.magnet_z, 5.0))
            RE(bps.wait_for([microscope.tracker.find_beads]))
            n_beads = len(_result(RE(bps.rd(microscope.tracker.rois))).bead_id)
            out(f"   tracking {n_beads} beads")
            out("2. Focus scan -2000 .. +2000 nm in 9 steps, one frame per step")
            scan_uid = _result(RE(focus_scan(microscope, -2000.0, 2000.0, 9)))
            out("3. Five frames and the tracked beads at magnet heights 4.0 mm and 1.5 mm")
            count_uids = _result(RE(count_at_heights(microscope, [4.0, 1.5], num=5)))
        finally:
            microscope.close()
            sent = writer.close(timeout=60.0)
        uids = [scan_uid, *count_uids]
        if not sent:
            out(
                "Some documents could not reach Tiled; they are kept in "
                f"{target.spool_dir}. Run `magscope tiled replay` once the server is up."
            )
        client = target.client()
        missing = [uid for uid in uids if uid not in client]
        if missing:
            raise RuntimeError(f"runs {missing} did not reach Tiled at {target.uri}")
    result = DemoResult(
        uids=uids,
        uri=target.uri,
        api_key=target.api_key,
        data_dir=target.data_dir,
        seconds=time.monotonic() - t0,
    )
    out(f"\nDone in {result.seconds:.1f} s: {len(uids)} runs in Tiled ({target.uri}).")
    for uid in uids:
        out(f"  {uid}")
    if target.source == "embedded-started":
        out("\nThe embedded server has stopped; serve the runs again with `magscope tiled`.")
    out("Read them back in Python:\n")
    out(result.read_back_code())
    return result
