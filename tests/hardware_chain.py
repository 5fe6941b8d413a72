"""The experiment chain and the killed-device run, on a microscope whose axes are real
hardware backends (python-microscope stages over the device server, EPICS motors over
Channel Access) and whose camera is the simulator; scored against the simulator's truth
as in the plan tests. Shared by the backend test modules."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from ophyd_async.core import init_devices

from magscope_devices import SimParams, make_microscope, parse_instrument_config
from magscope_devices.sim.world import SimWorld
from magscope_plans import count_at_heights, find_reference_beads, zlut_sweep
from magscope_plans._force_calibration import force_calibration
from tracking_sim import sim_beads_of, truth_now

PARAMS = SimParams(
    seed=3, n_tethered=6, n_reference=2, width_px=512, height_px=384,
    contour_nm_range=(2000.0, 3000.0),
)
#: the magnet heights (mm) of the scan whose device is killed
KILLED_SCAN_MM = [2.0, 3.0, 4.0, 5.0] * 50
SIM_CONFIG = {"seed": 3, "n_tethered": 6, "n_reference": 2, "width_px": 512,
              "height_px": 384, "contour_nm_range": [2000.0, 3000.0]}


@dataclass
class ChainFigures:
    height_error_nm: np.ndarray  # |Z-LUT height offset - truth| per tethered bead
    force_error: np.ndarray  # force / true force - 1, per bead and height
    magnet_z_after_mm: float  # where the magnets were left (the device's own reading)

    def summary(self, backend: str) -> str:
        return (f"{backend}: heights max error {self.height_error_nm.max():.1f} nm, "
                f"force median error {100 * np.median(np.abs(self.force_error)):.1f} % "
                f"(max {100 * np.abs(self.force_error).max():.1f} %) at 2 and 4 mm")


def run_experiment_chain(
    axes: dict, data_dir: Path, magnet_z_on_device: Callable[[], float]
) -> ChainFigures:
    """Find beads, reference beads, a Z-LUT sweep, a force calibration at 2 and 4 mm and a
    count, on the simulated camera with ``axes`` (the config's ``magnet_z``,
    ``magnet_rotation`` and ``focus`` entries)."""
    config = parse_instrument_config({**axes, "sim": SIM_CONFIG, "tracking": {"workers": 1}})
    assert config.sim == PARAMS
    world = SimWorld(PARAMS)
    table = world.bead_table()
    RE = RunEngine(call_returns_result=True)
    events: list[dict] = []
    RE.subscribe(lambda name, doc: events.append(doc["data"]) if name == "event" else None)
    with init_devices():
        mic = make_microscope(config, data_dir=data_dir, name="microscope")
    try:
        # hardware starts where it is: bring the focus to the surface, the magnets up
        RE(bps.mv(mic.focus, 0.0, mic.magnet_z, 8.0))
        time.sleep(0.3)
        RE(bps.wait_for([mic.tracker.find_beads]))
        rois = RE(bps.rd(mic.tracker.rois)).plan_result
        truth = truth_now(mic)
        assert truth["focus_nm"][0] == pytest.approx(0.0, abs=1.0)
        assert truth["magnet_z_mm"][0] == pytest.approx(8.0, abs=1e-3)
        mapping = sim_beads_of(rois, truth)
        assert sorted(mapping.values()) == list(range(PARAMS.n_beads))
        refs = RE(find_reference_beads(mic.tracker)).plan_result
        assert sorted(table["kind"][[mapping[int(b)] for b in refs]]) == ["reference"] * 2
        RE(zlut_sweep(mic, -2000, 7000, 100, frames_per_step=2, magnet_z_mm=1.0))
        heights = RE(bps.rd(mic.tracker.height_offsets)).plan_result
        t = np.array([mapping[int(b)] for b in heights.bead_id])
        ref_radius = table["radius_nm"][[mapping[int(b)] for b in refs]].mean()
        true_height = world.true_extension(1.0)[t] + table["radius_nm"][t] - ref_radius
        height_err = np.abs(heights.offset_nm - true_height)
        RE(force_calibration(mic, [2.0, 4.0], rel_error=0.05, max_duration_s=12.0))
        cal = [e for e in events if "calibration-force_psd_pn" in e]
        assert len(cal) == 2
        force_err = np.concatenate([
            np.asarray(e["calibration-force_psd_pn"])
            / world.true_force(e["calibration-magnet_z_mm"])[
                [mapping[int(b)] for b in e["calibration-bead_id"]]] - 1
            for e in cal
        ])
        uids = RE(count_at_heights(mic, [3.0], num=10)).plan_result
        assert len(uids) == 1
        return ChainFigures(height_err, force_err, magnet_z_on_device())
    finally:
        mic.close()


@dataclass
class KilledRun:
    error: BaseException  # what the run failed with
    elapsed_s: float  # from the scan's start to its failure
    stop: dict  # the run's stop document
    magnet_z_mm: float  # the axis's last readback


def scan_until_killed(axes: dict, data_dir: Path, kill: Callable[[], None]) -> KilledRun:
    """A long list scan of the magnet height with the camera, ``kill`` called 1 s in."""
    config = parse_instrument_config({**axes, "tracking": {"enabled": False}})
    RE = RunEngine(call_returns_result=True)
    stops: list[dict] = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    with init_devices():
        mic = make_microscope(config, data_dir=data_dir, name="mic")
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        threading.Timer(1.0, kill).start()
        t0 = time.monotonic()
        with pytest.raises(FailedStatus) as info:
            RE(bp.list_scan([mic.camera], mic.magnet_z, KILLED_SCAN_MM, per_step=None))
        elapsed = time.monotonic() - t0
        last = RE(bps.rd(mic.magnet_z)).plan_result  # the axis's own readback, no device
        error = info.value.__cause__
        if error is None:  # bluesky raised FailedStatus alone: the status holds the error
            status = info.value.args[0] if info.value.args else None
            error = getattr(status, "exception", lambda: None)() or info.value
        return KilledRun(error, elapsed, stops[-1], float(last))
    finally:
        mic.close()
