"""The focal shift on the simulated microscope, against its truth.

The simulator's objective moves the focal plane by 0.80 of its travel. Told 0.88 (the
simple n2/n1 estimate), every height is 10 % long; the recipe of docs/focal-shift.md
(tethers of a known contour length, one force-extension curve) recovers the factor within
2 %; told the measured factor, a new sweep gives heights within the height anchor's
figures.
"""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import init_devices

from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams, SimWorld
from magscope_plans import find_reference_beads, force_extension, zlut_sweep
from magscope_plans._force_calibration import force_calibration
from magscope_plans.analysis import focal_shift_from_contour
from tracking_sim import sim_beads_of, truth_now

pytestmark = pytest.mark.system

TRUE_SHIFT = 0.80
KNOWN_CONTOUR_NM = 3000.0  # the construct: every tether this long
PARAMS = SimParams(
    seed=12, n_tethered=6, n_reference=2, width_px=512, height_px=384,
    contour_nm_range=(KNOWN_CONTOUR_NM, KNOWN_CONTOUR_NM), focal_shift=TRUE_SHIFT,
)
WORLD = SimWorld(PARAMS)
TABLE = WORLD.bead_table()
#: the sweep, in nm of focus travel: -2.5 to +5 um (-2.0 to +4.0 um of the sample at 0.8)
SWEEP = (-2500.0, 5000.0, 100.0)


@pytest.fixture(scope="module")
def RE():
    return RunEngine(call_returns_result=True)


@pytest.fixture(scope="module")
def docs(RE):
    collected: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: collected.append((name, doc)))
    return collected


@pytest.fixture(scope="module")
def microscope(RE, tmp_path_factory):
    with init_devices():
        mic = make_simulated_microscope(
            PARAMS, data_dir=tmp_path_factory.mktemp("focal"), instance="focaltest",
            tracking_workers=1, focal_shift=0.88, name="microscope",
        )
    yield mic
    mic.close()


def _height_errors(RE, mic, refs):
    """Each bead's anchored height minus the truth (nm), for the Z-LUT swept last."""
    heights = RE(bps.rd(mic.tracker.height_offsets)).plan_result
    rois = RE(bps.rd(mic.tracker.rois)).plan_result
    sim_of = sim_beads_of(rois, truth_now(mic))
    t = np.array([sim_of[int(b)] for b in heights.bead_id])
    ref_radius = TABLE["radius_nm"][[sim_of[int(b)] for b in refs]].mean()
    true = WORLD.true_extension(1.0)[t] + TABLE["radius_nm"][t] - ref_radius
    tethered = TABLE["kind"][t] == "tethered"
    return (heights.offset_nm - true)[tethered], true[tethered]


def test_the_recipe_recovers_the_focal_shift_and_the_heights_follow(RE, microscope, docs):
    mic = microscope
    while mic.camera.process.ring.count < 2:
        time.sleep(0.01)
    RE(bps.wait_for([mic.tracker.find_beads]))
    refs = RE(find_reference_beads(mic.tracker)).plan_result
    assert RE(bps.rd(mic.focus.focal_shift)).plan_result == 0.88

    # told 0.88: heights come out 0.88 / 0.80 = 10 % long
    RE(zlut_sweep(mic, *SWEEP, frames_per_step=2, magnet_z_mm=1.0))
    errors, true = _height_errors(RE, mic, refs)
    assert np.median((errors + true) / true) == pytest.approx(0.88 / TRUE_SHIFT, rel=0.01)

    # the recipe: calibrate, one force-extension curve, contour lengths against the known
    RE(force_calibration(mic, [1.0, 2.0, 3.5, 5.0], rel_error=0.05, max_duration_s=10.0))
    low = RE(bps.rd(mic.force.low_limit)).plan_result
    high = RE(bps.rd(mic.force.high_limit)).plan_result
    forces = np.geomspace(max(low * 1.01, 0.5), high * 0.99, 8)
    RE(force_extension(mic, forces, dwell_s=1.5, direction="up", settle_s=0.3))
    fit = [d["data"] for n, d in docs if n == "event" and "wlc-contour_nm" in d["data"]][-1]
    estimate = focal_shift_from_contour(fit["wlc-contour_nm"], KNOWN_CONTOUR_NM, 0.88)
    print(f"told 0.88, true {TRUE_SHIFT}: recovered {estimate.focal_shift:.4f} +/- "
          f"{estimate.focal_shift_err:.4f} from {estimate.n_beads} beads")
    assert estimate.n_beads >= 5
    assert estimate.focal_shift == pytest.approx(TRUE_SHIFT, rel=0.02), estimate
    assert estimate.focal_shift_err < 0.02 * TRUE_SHIFT

    # told the measured factor, a new sweep gives the heights to the anchor's figures
    RE(bps.mv(mic.focus.focal_shift, round(estimate.focal_shift, 3)))
    RE(zlut_sweep(mic, *SWEEP, frames_per_step=2, magnet_z_mm=1.0))
    errors, true = _height_errors(RE, mic, refs)
    print(f"heights after: |error| {np.median(np.abs(errors)):.1f} nm median, "
          f"{np.max(np.abs(errors)):.1f} nm max over {errors.size} beads")
    # the factor's own error (under 2 %) scales the ~2.7 um heights: within 2 % + 20 nm
    assert np.all(np.abs(errors) < 0.02 * true + 20.0), errors
