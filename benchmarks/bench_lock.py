"""The bead locks against the simulator's truth, with time compressed by a fast drift.

One command: ``.venv/bin/python benchmarks/bench_lock.py [--seconds S]``. Each phase runs
the simulated microscope (100 frames/s, one tracking worker, a Z-LUT swept with the drift
stopped, reference beads found) and scores against the simulator's ground truth:

Focus (stage drift along z at 50 nm/s r.m.s., periods 20-120 s; no lateral drift):

1. ``still`` (no drift, no lock, 20 s), then ``on`` and ``off``, ``--seconds`` each:
   the reference beads' true defocus (their height minus the focal plane, nm) r.m.s.
   about the lock's target (on: the true defocus in the second before the drift starts,
   the height of the still phase) or about its value when the phase began (off).
   ``off, same drift``: what the beads would have done over the *on* phase's drift with
   the focus held still (their true height change), the figure the 10x ratio uses.
   Extension error (tracked - true, nm: each tethered bead's mean over the phase) with
   the drift stopped and no lock (``still``), with the drift and the lock on, and off;
   per bead, how far ``on`` and ``off`` are from ``still``, and a second ``still`` phase
   after them, back at the same height (the floor: how far a bead's mean error moves by
   itself).
2. ``step``: drift stopped, locked, then the sample stage steps 200 nm along z (every
   bead's defocus jumps 200 nm; a focus moved by hand would race the lock, the focus's
   one writer): the lock's errors update by update; updates until within 10 nm,
   overshoot (% of 200 nm).

XY (stage drift in x and y at 100 nm/s r.m.s., periods 20-120 s; no z drift):

3. ``off`` then ``on``: beads whose true centre came more than 16 px (a quarter of the 64
   px ROI: the ring pattern the profile needs is cut by the ROI's edge) off their ROI's
   centre at any time, with the ROIs left where they were (off) and with the XY lock on;
   ``off, same drift``: the same count over the *on* phase's drift had the ROIs stayed.
   ROI moves, and the jump in (tracked - true) x, y at each move (px: mean of the 20
   frames after minus the 20 frames before, per moved bead).

The machine is shared: the figures move with its load (note ``uptime``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ROI = 64
NM_PER_PX = 100.0
EDGE_PX = ROI / 4
#: Lateral drift of the XY phases (nm/s r.m.s.): about 30 px excursions in a minute.
XY_DRIFT = 100.0


def result_of(outcome):
    """A plan's return value from ``RE(...)`` (``call_returns_result=True``)."""
    from bluesky.run_engine import RunEngineResult

    assert isinstance(outcome, RunEngineResult)
    return outcome.plan_result


class Session:
    """A simulated microscope with ROIs on every bead, a Z-LUT and reference beads."""

    def __init__(self, params, data_dir: str) -> None:
        import bluesky.plan_stubs as bps
        from bluesky import RunEngine
        from ophyd_async.core import init_devices

        from magscope_devices import make_simulated_microscope
        from magscope_plans import find_reference_beads, zlut_sweep
        from tracking_sim import true_rois, truth_now

        self.RE = RunEngine(call_returns_result=True)
        with init_devices():  # connects the devices bound to local names
            microscope = make_simulated_microscope(
                params, data_dir=data_dir, tracking_workers=1, name="microscope"
            )
        self.mic = mic = microscope
        RE = self.RE
        mic.simulation.set_drift_speed(0.0)
        while mic.camera.process.ring.count < 2:
            time.sleep(0.01)
        RE(bps.mv(mic.magnet_z, 3.0))
        RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic), roi=ROI, nm_per_px=NM_PER_PX)))
        RE(zlut_sweep(mic, -2000, 2000, 100, frames_per_step=3))
        self.refs = np.array(sorted(result_of(RE(find_reference_beads(mic.tracker)))))
        self.n_beads = params.n_tethered + params.n_reference
        self.tethered = np.setdiff1d(np.arange(self.n_beads), self.refs)

    def newest(self) -> int:
        return int(self.mic.camera.latest_frame()[2])

    def collect(self, seconds: float, every=None):
        """Frame indices, frame times (UNIX s), truth rows and track columns of the next
        ``seconds`` (read every 2 s: the rings are shorter than a phase). ``every(t)``:
        called every 50 ms."""
        service = self.mic.tracker.service
        k = self.newest() + 1
        truth_parts, track_parts, index_parts, stamp_parts = [], [], [], []
        end = time.monotonic() + seconds
        last_read = time.monotonic()
        while True:
            now = time.monotonic()
            if every is not None:
                every(now)
            if now - last_read >= 2.0 or now >= end:
                idx, stamps, rows = self.mic.truth.since(k)
                if len(idx):
                    tracks = service.track_ring.rows_since(int(idx[0]))
                    cols = tracks.columns(np.arange(self.n_beads))
                    n = min(len(idx), len(tracks))
                    truth_parts.append(rows[:n])
                    track_parts.append({key: v[:n] for key, v in cols.items()})
                    index_parts.append(idx[:n])
                    stamp_parts.append(stamps[:n])
                    k = int(idx[n - 1]) + 1 if n else k
                last_read = now
                if now >= end:
                    break
            time.sleep(0.05)
        truth = np.concatenate(truth_parts)
        tracks = {key: np.concatenate([p[key] for p in track_parts]) for key in track_parts[0]}
        return np.concatenate(index_parts), np.concatenate(stamp_parts), truth, tracks

    def close(self) -> None:
        self.mic.close()


def focus_phase(s: Session, seconds: float) -> dict:

    from magscope_plans import lock_focus, unlock_focus

    mic, RE, refs = s.mic, s.RE, s.refs
    lock = mic.focus_lock

    def defocus(truth):
        return truth["z_nm"][:, refs].mean(axis=1) - truth["focal_plane_nm"][:, 0]

    def extension_error(truth, tracks):
        ref_z = np.nanmean(tracks["z_nm"][:, refs], axis=1)
        tracked = tracks["z_nm"][:, s.tethered] - ref_z[:, None]
        true = truth["z_nm"][:, s.tethered] - truth["z_nm"][:, refs].mean(axis=1)[:, None]
        return np.nanmean(tracked - true, axis=0)  # per bead (nm)

    out: dict = {}

    def engage(target_nm=None) -> float:
        """Lock (drift stopped) and wait until it holds; returns its target (tracked nm)."""
        RE(lock_focus(mic, target_nm, rate_hz=10))
        while not (lock.status.locked and lock.status.updates > n_updates[0] + 5):
            time.sleep(0.05)
        time.sleep(0.5)
        n_updates[0] = lock.status.updates
        return lock.status.target_nm

    n_updates = [0]
    # still: no drift, no lock (the extension error of beads that stay where they are);
    # every phase that compares extensions then holds the reference beads at this height
    _, _, truth, tracks = s.collect(min(seconds, 20.0))
    ext_still = extension_error(truth, tracks)
    target_tracked = engage()
    # on: the lock holds the still phase's height while the stage drifts
    _, _, truth, _ = s.collect(1.0)
    target = float(defocus(truth).mean())  # the true defocus the lock holds
    mic.simulation.set_drift_speed(1.0)
    moves0 = lock.status.moves
    _, _, truth, tracks = s.collect(seconds)
    d = defocus(truth)
    out["on_rms"] = float(np.sqrt(np.mean((d - target) ** 2)))
    out["on_max"] = float(np.max(np.abs(d - target)))
    heights = truth["z_nm"][:, refs].mean(axis=1)
    out["same_drift_off_rms"] = float(np.sqrt(np.mean((heights - heights[0]) ** 2)))
    out["moves"] = lock.status.moves - moves0
    ext_on = extension_error(truth, tracks)
    # off: the same drift goes on, nothing follows it
    RE(unlock_focus(mic))
    _, _, truth, tracks = s.collect(seconds)
    mic.simulation.set_drift_speed(0.0)
    d = defocus(truth)
    out["off_rms"] = float(np.sqrt(np.mean((d - d[0]) ** 2)))
    ext_off = extension_error(truth, tracks)
    # still again at the still phase's height (the lock brings the beads back, then lets
    # go): how much a bead's mean error moves by itself, the floor of the comparisons
    engage(target_tracked)
    RE(unlock_focus(mic))
    _, _, truth, tracks = s.collect(min(seconds, 20.0))
    out["ext_still_again"] = np.abs(extension_error(truth, tracks) - ext_still)
    out["ext_still"] = float(np.median(ext_still))
    out["ext_on"] = float(np.median(ext_on))
    out["ext_off"] = float(np.median(ext_off))
    out["ext_on_vs_still"] = np.abs(ext_on - ext_still)
    out["ext_off_vs_still"] = np.abs(ext_off - ext_still)
    engage(target_tracked)
    # step: the stage steps 200 nm along z while locked, no drift
    n0 = len(lock._loop_obj.history)
    mic.simulation.set_stage_z_offset(200.0)  # the stage jumps 200 nm: a defocus step
    time.sleep(3.0)
    history = list(lock._loop_obj.history)[n0:]
    errors = np.array([h.error_nm for h in history if math.isfinite(h.error_nm)])
    first = int(np.argmax(np.abs(errors) > 50.0))
    after = errors[first:]
    within = next(i for i in range(len(after)) if np.all(np.abs(after[i:]) < 10.0))
    out["step_errors"] = after[:8]
    out["step_updates"] = within
    sign = np.sign(after[0])  # overshoot: an error of the other sign than the step's
    out["step_overshoot_pct"] = float(max(0.0, np.max(-sign * after)) / 200.0 * 100.0)
    RE(unlock_focus(mic))
    return out


def xy_phase(s: Session, seconds: float) -> dict:
    import bluesky.plan_stubs as bps

    from magscope_plans import lock_xy, unlock_xy
    from tracking_sim import true_rois, truth_now

    mic, RE = s.mic, s.RE
    service = mic.tracker.service
    half = (ROI - 1) / 2
    out: dict = {}

    def table_by_id():
        t = service.rois
        return t[np.argsort(t["bead_id"])]

    def offsets(truth, tables):
        """(frames, beads) true distance (px) from each bead's ROI centre."""
        x = truth["x_nm"] / NM_PER_PX
        y = truth["y_nm"] / NM_PER_PX
        return np.hypot(x - (tables["x0"] + half), y - (tables["y0"] + half))

    # off: ROIs stay
    mic.simulation.set_drift_speed(1.0)
    table = table_by_id()
    _, _, truth, _ = s.collect(seconds)
    out["off_edge"] = int(np.sum(offsets(truth, table[None, :]).max(axis=0) > EDGE_PX))
    out["off_max_px"] = float(offsets(truth, table[None, :]).max())
    # on: ROIs centred on the beads again (drift stopped), then the lock; the ROI table
    # sampled every 50 ms, to know where each ROI was at each frame
    mic.simulation.set_drift_speed(0.0)
    RE(bps.mv(mic.tracker.rois, true_rois(truth_now(mic), roi=ROI, nm_per_px=NM_PER_PX)))
    time.sleep(0.5)
    mic.simulation.set_drift_speed(1.0)
    RE(lock_xy(mic, threshold_px=1.0, rate_hz=2.0))
    table0 = table_by_id()
    samples: list[tuple[float, np.ndarray]] = []

    def sample(_now):
        samples.append((time.time(), table_by_id()))

    index, t_frames, truth, tracks = s.collect(seconds, every=sample)
    mic.simulation.set_drift_speed(0.0)
    RE(unlock_xy(mic))
    # the ROI table in force at each frame: the newest sample before the frame's time
    times = np.array([t for t, _ in samples])
    x0 = np.array([tb["x0"] for _, tb in samples])
    y0 = np.array([tb["y0"] for _, tb in samples])
    which = np.clip(np.searchsorted(times, t_frames) - 1, 0, len(times) - 1)
    tables = np.zeros((len(index), s.n_beads), table0.dtype)
    tables["x0"], tables["y0"] = x0[which], y0[which]
    off_on = offsets(truth, tables)
    out["on_edge"] = int(np.sum(off_on.max(axis=0) > EDGE_PX))
    out["on_max_px"] = float(off_on.max())
    out["same_drift_off_edge"] = int(np.sum(offsets(truth, table0[None, :]).max(axis=0) > EDGE_PX))
    out["same_drift_off_max_px"] = float(offsets(truth, table0[None, :]).max())
    out["moves"] = int(mic.xy_lock.status.moves)
    # jumps at ROI moves: (tracked - true) before and after, per moved bead
    err_x = (tracks["x_nm"] - truth["x_nm"]) / NM_PER_PX
    err_y = (tracks["y_nm"] - truth["y_nm"]) / NM_PER_PX
    jumps = []
    moved = np.flatnonzero(np.any(np.diff(x0, axis=0) != 0, axis=1)
                           | np.any(np.diff(y0, axis=0) != 0, axis=1))
    for m in moved:
        t_move = times[m + 1]
        f = int(np.searchsorted(t_frames, t_move))
        changed = np.flatnonzero((x0[m + 1] != x0[m]) | (y0[m + 1] != y0[m]))
        lo, hi = f - 25, f + 25  # 5 frames of margin either side of the sample's time
        if lo - 20 < 0 or hi + 20 > len(index):
            continue
        for b in changed:
            before = np.nanmean(err_x[lo - 20:lo, b]), np.nanmean(err_y[lo - 20:lo, b])
            after = np.nanmean(err_x[hi:hi + 20, b]), np.nanmean(err_y[hi:hi + 20, b])
            jumps.append(max(abs(after[0] - before[0]), abs(after[1] - before[1])))
    jumps_arr = np.array(jumps)
    out["jumps"] = jumps_arr[np.isfinite(jumps_arr)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (s)")
    parser.add_argument("--only", choices=("focus", "xy"), help="run one lock's phases")
    args = parser.parse_args()

    common = {"seed": 21, "n_tethered": 12, "n_reference": 4, "width_px": 768,
              "height_px": 576, "drift_period_s_range": (20.0, 120.0)}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "xy":
            focus_report(args.seconds, common, tmp)
        if args.only != "focus":
            xy_report(args.seconds, common, tmp)
    print(f"\n{time.monotonic() - t_start:.0f} s in all")
    return 0


def focus_report(seconds: float, common: dict, tmp: str) -> None:
    from magscope_devices.sim.world import SimParams

    s = Session(SimParams(**common, drift_rms_speed_nm_s=(0.0, 0.0, 50.0)), tmp)
    try:
        f = focus_phase(s, seconds)
    finally:
        s.close()
    print(f"\nFocus lock, {seconds:g} s a phase, z drift 50 nm/s r.m.s. "
          f"(periods 20-120 s), 10 Hz, {len(s.refs)} reference beads")
    print(f"  reference defocus r.m.s.: off {f['off_rms']:.1f} nm; on {f['on_rms']:.2f} nm "
          f"(max {f['on_max']:.1f} nm, {f['moves']} focus moves)")
    print(f"  off over the on phase's drift: {f['same_drift_off_rms']:.1f} nm -> "
          f"ratio {f['same_drift_off_rms'] / f['on_rms']:.0f}x")
    on, off = f["ext_on_vs_still"], f["ext_off_vs_still"]
    print(f"  extension error (tracked - true, nm, median over beads): still {f['ext_still']:+.2f}, "
          f"lock on {f['ext_on']:+.2f}, lock off {f['ext_off']:+.2f}")
    print(f"  per-bead change from 'still' (nm): lock on median {np.median(on):.2f}, max "
          f"{on.max():.2f}; lock off median {np.median(off):.2f}, max {off.max():.2f}; "
          f"still again (no drift, no lock) median {np.median(f['ext_still_again']):.2f}, "
          f"max {f['ext_still_again'].max():.2f}")
    print(f"  200 nm focus step: errors {np.array2string(f['step_errors'], precision=1)} nm; "
          f"within 10 nm after {f['step_updates']} updates; overshoot "
          f"{f['step_overshoot_pct']:.1f} %")


def xy_report(seconds: float, common: dict, tmp: str) -> None:
    from magscope_devices.sim.world import SimParams

    # a larger sensor with the beads well inside: drifting beads stay on it
    xy = {**common, "width_px": 1024, "height_px": 768, "edge_margin_px": 120.0}
    s = Session(SimParams(**xy, drift_rms_speed_nm_s=(XY_DRIFT, XY_DRIFT, 0.0)), tmp)
    try:
        x = xy_phase(s, seconds)
    finally:
        s.close()
    n = s.n_beads
    print(f"\nXY lock, {seconds:g} s a phase, lateral drift {XY_DRIFT:g} nm/s r.m.s. "
          f"(periods 20-120 s), threshold 1 px, 2 Hz, {n} beads; 'at the edge': more than "
          f"{EDGE_PX:g} px off the ROI centre")
    print(f"  beads at the edge: off {x['off_edge']}/{n} (largest offset "
          f"{x['off_max_px']:.1f} px); on {x['on_edge']}/{n} (largest {x['on_max_px']:.1f} px)")
    print(f"  off over the on phase's drift: {x['same_drift_off_edge']}/{n} "
          f"(largest {x['same_drift_off_max_px']:.1f} px)")
    j = x["jumps"]
    print(f"  {x['moves']} ROI moves")
    if j.size:
        print(f"  jump of (tracked - true) at a move: median {np.median(j):.4f} px, "
              f"max {j.max():.4f} px over {j.size} bead moves")


if __name__ == "__main__":
    sys.exit(main())
