"""Accuracy of the experiment plans on the simulated microscope, against its ground truth.

Run:  .venv/bin/python benchmarks/bench_plans.py [--fs 100|1000] [--max-duration S]

The whole chain a user runs, on the real devices (camera process, tracking workers,
shared memory): find beads and the reference beads, an anchored Z-LUT sweep, a force
calibration at magnet heights spanning ~0.3 to ~30 pN (record length chosen by the plan
for a 5 % force error, capped at ``--max-duration`` s), a force-extension curve with WLC
fits and a rotation-extension (hat) curve. Prints per height the median and 95th
percentile of |F / F_true - 1| for the blur+aliasing PSD fit, the plain Lorentzian (the
baseline, same records) and the Allan variance; then contour and persistence length
errors and buckling point errors.

At ``--fs 1000`` the camera runs a 384 x 256 px sensor with 4 tethered beads at 1 ms
exposure (the simulated camera's ceiling on this machine is about 460 frames/s at full
size); at 100 frames/s the default 1024 x 768 sensor with 20 tethered, 4 reference beads.
"""

from __future__ import annotations

import argparse
import time

import bluesky.plan_stubs as bps
import numpy as np
from bluesky import RunEngine
from ophyd_async.core import init_devices
from scipy.optimize import brentq

from magscope_devices import make_simulated_microscope
from magscope_devices.sim import SimParams, SimWorld
from magscope_plans import (
    find_reference_beads,
    force_calibration,
    force_extension,
    rotation_extension,
    zlut_sweep,
)
from magscope_plans.analysis import wlc_fit

FORCES_PN = (0.3, 1.0, 3.0, 10.0, 30.0)


def pct(errors) -> str:
    e = 100 * np.abs(np.asarray(errors, float))
    if e.size == 0 or np.all(np.isnan(e)):
        return f"{'-':>13}"
    return f"{np.nanmedian(e):5.1f} / {np.nanquantile(e, 0.95):5.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fs", type=float, default=100.0, choices=(100.0, 1000.0))
    ap.add_argument("--max-duration", type=float, default=60.0, help="cap per height (s)")
    ap.add_argument("--dwell", type=float, default=3.0, help="force-extension/rotation dwell (s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--radius-cv", type=float, default=0.03,
                    help="relative spread of the bead radii (the simulator's default is 0.02)")
    ap.add_argument("--no-rotation", action="store_true", help="skip the hat curve")
    ap.add_argument("--dump", default=None,
                    help="save the calibration's events and the truth to this .npz (analysis)")
    ap.add_argument("--focal-shift", type=float, default=0.88,
                    help="the simulated objective's focal shift (the instrument is told the same)")
    args = ap.parse_args()
    if args.fs == 1000.0:
        params = SimParams(
            seed=args.seed, n_tethered=4, n_reference=2, width_px=384, height_px=256,
            exposure_s=0.001, bead_radius_cv=args.radius_cv, focal_shift=args.focal_shift,
        )
        exposure, roi = 0.001, 64
    else:
        params = SimParams(seed=args.seed, bead_radius_cv=args.radius_cv,
                           focal_shift=args.focal_shift)
        exposure, roi = 0.005, 64
    world = SimWorld(params)
    table = world.bead_table()
    nt = params.n_tethered
    heights = [
        brentq(lambda z, f=f: np.median(world.true_force(z)[:nt]) - f, 0.3, 10.0)
        for f in FORCES_PN
    ]
    RE = RunEngine(call_returns_result=True)
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with init_devices():
        mic = make_simulated_microscope(
            params, data_dir="/tmp/magscope-bench-plans", frame_rate_hz=args.fs,
            exposure_s=exposure, ring_capacity=512, roi_size_px=roi, name="microscope",
        )
    t_start = time.monotonic()
    try:
        while mic.camera.process.ring.count < 2:
            time.sleep(0.01)
        RE(bps.wait_for([mic.tracker.find_beads]))
        rois = RE(bps.rd(mic.tracker.rois)).plan_result
        _, _, index = mic.camera.latest_frame()
        truth = mic.truth.frame(index)
        half = (roi - 1) / 2
        truth_id = {
            int(b): int(np.argmin(
                (truth["x_nm"] / params.nm_per_px - (x0 + half)) ** 2
                + (truth["y_nm"] / params.nm_per_px - (y0 + half)) ** 2
            ))
            for b, x0, y0 in zip(rois.bead_id, rois.x0_px, rois.y0_px, strict=True)
        }

        def tid(ids):
            return np.array([truth_id[int(b)] for b in ids])

        refs = RE(find_reference_beads(mic.tracker)).plan_result
        print(
            f"{len(rois.bead_id)} beads found, reference beads {refs} "
            f"(truth: {sorted(table['kind'][tid(refs)].tolist())}); tethers "
            f"{np.nanmin(table['contour_nm']):.0f}..{np.nanmax(table['contour_nm']):.0f} nm; "
            f"{args.fs:.0f} frames/s, {1e3 * exposure:.0f} ms exposure; focal shift "
            f"{params.focal_shift:g}, bead radii spread {args.radius_cv:.0%}", flush=True,
        )
        RE(zlut_sweep(mic, -2000, 10000, 100, frames_per_step=3, magnet_z_mm=1.0))
        heights_tab = RE(bps.rd(mic.tracker.height_offsets)).plan_result
        t = tid(heights_tab.bead_id)
        ref_r = table["radius_nm"][tid(refs)].mean()
        true_h = world.true_extension(1.0)[t] + table["radius_nm"][t] - ref_r
        h_err = heights_tab.offset_nm - true_h
        print(f"Z-LUT height anchor: error {np.median(np.abs(h_err)):.1f} nm median, "
              f"{np.max(np.abs(h_err)):.1f} nm max over {len(t)} beads", flush=True)

        RE(force_calibration(mic, heights, rel_error=0.05, max_duration_s=args.max_duration))
        print(f"\n{'F pN':>6} {'h mm':>5} {'rec s':>6} | {'psd %':>13} | {'plain %':>13} | "
              f"{'allan %':>13}   (|error| median / 95th pct)")
        all_psd: list[float] = []
        for _, d in docs:
            data = d.get("data", {})
            if "calibration-force_psd_pn" not in data:
                continue
            z = data["calibration-magnet_z_mm"]
            tf = world.true_force(z)[tid(data["calibration-bead_id"])]
            e_psd = np.asarray(data["calibration-force_psd_pn"]) / tf - 1
            e_plain = np.asarray(data["calibration-force_plain_psd_pn"]) / tf - 1
            e_allan = np.asarray(data["calibration-force_allan_pn"]) / tf - 1
            all_psd += list(e_psd)
            print(f"{np.median(tf):6.2f} {z:5.2f} {data['calibration-record_s']:6.1f} | "
                  f"{pct(e_psd)} | {pct(e_plain)} | {pct(e_allan)}   signed median psd "
                  f"{100 * np.nanmedian(e_psd):+.1f} %", flush=True)
        print(f"{'all':>6} {'':>5} {'':>6} | {pct(all_psd)}")
        if args.dump:
            cal_events = [d["data"] for _, d in docs if "calibration-force_psd_pn" in
                          d.get("data", {})]
            ids = np.asarray(cal_events[0]["calibration-bead_id"])
            np.savez(
                args.dump,
                heights=[ev["calibration-magnet_z_mm"] for ev in cal_events],
                force=[ev["calibration-force_psd_pn"] for ev in cal_events],
                force_err=[ev["calibration-force_psd_pn_err"] for ev in cal_events],
                true_force=[world.true_force(ev["calibration-magnet_z_mm"])[tid(ids)]
                            for ev in cal_events],
                probe_heights=heights, probe_true=[world.true_force(z)[tid(ids)]
                                                   for z in heights],
            )
        # what microscope.force reports for each bead, against the truth, by force
        from magscope_devices import ForceCalibration

        cal = ForceCalibration.load(RE(bps.rd(mic.force.calibration_file)).plan_result)
        tethered_ids = [b for b in cal.bead_ids]
        print(f"\nmicroscope.force per bead against the truth ({len(tethered_ids)} beads):")
        print(f"{'F pN':>6} {'h mm':>5} | {'|error| %':>13} | signed median | reported "
              f"error (median) | within 1 sigma")
        every: list[float] = []
        inside: list[bool] = []
        for f, z in zip(FORCES_PN, heights, strict=True):
            reported = np.array([cal.force_pn_for_bead(b, z) for b in tethered_ids])
            sigma = np.array([cal.force_err_pn_for_bead(b, z) for b in tethered_ids])
            true_f = world.true_force(z)[tid(tethered_ids)]
            e = reported / true_f - 1
            every += list(e)
            hit = np.abs(reported - true_f) <= sigma
            inside += list(hit)
            print(f"{f:6.2f} {z:5.2f} | {pct(e)} | {100 * np.median(e):+12.1f} % | "
                  f"{100 * np.nanmedian(sigma / reported):12.1f} % | {np.mean(hit):13.0%}")
        print(f"{'all':>6} {'':>5} | {pct(every)}   (bar: median <= 3 %, 95th <= 8 %); "
              f"1 sigma covers the truth for {np.mean(inside):.0%} (bar: 68 +/- 10 %)")
        fitted = [d["data"] for n, d in docs if n == "event" and "force_fit-bead_radius_nm" in
                  d.get("data", {})][-1]
        t = tid(fitted["force_fit-bead_id"])
        r_true = table["radius_nm"][t]
        r_fit = np.asarray(fitted["force_fit-bead_radius_nm"])
        r_err = np.asarray(fitted["force_fit-bead_radius_nm_err"])
        pull = (r_fit - r_true) / r_err
        ref_true = table["radius_nm"][tid(refs)].mean()
        print(f"\nbead radii {r_true.min():.0f}..{r_true.max():.0f} nm (true): fitted |error| "
              f"{np.nanmedian(np.abs(r_fit - r_true)):.1f} nm median, "
              f"{np.nanmax(np.abs(r_fit - r_true)):.1f} nm max, reported error "
              f"{np.nanmedian(r_err):.1f} nm median; within 1 sigma "
              f"{np.mean(np.abs(pull) <= 1):.0%}; reference beads' radius "
              f"{fitted['force_fit-reference_radius_nm']:.0f} +/- "
              f"{fitted['force_fit-reference_radius_nm_err']:.0f} nm (true mean "
              f"{ref_true:.0f}; "
              + ("from the beads' mean radius)" if not np.isfinite(
                  fitted["force_fit-radius_pattern_scatter_nm"]) else
                 f"from the ring-contrast line, scatter "
                 f"{fitted['force_fit-radius_pattern_scatter_nm']:.1f} nm)"), flush=True)

        low = RE(bps.rd(mic.force.low_limit)).plan_result
        high = RE(bps.rd(mic.force.high_limit)).plan_result
        forces = np.geomspace(low * 1.01, high * 0.99, 10)
        RE(force_extension(mic, forces, dwell_s=args.dwell, direction="up"))
        fit = [d["data"] for n, d in docs if n == "event" and "wlc-contour_nm" in d["data"]][-1]
        t = tid(fit["wlc-bead_id"])
        c_err = np.asarray(fit["wlc-contour_nm"]) / table["contour_nm"][t] - 1
        p_err = np.asarray(fit["wlc-persistence_nm"]) / table["persistence_nm"][t] - 1
        c_sigma = np.asarray(fit["wlc-contour_nm_err"])
        p_sigma = np.asarray(fit["wlc-persistence_nm_err"])
        c_cover = np.mean(np.abs(c_err) * table["contour_nm"][t] <= c_sigma)
        p_cover = np.mean(np.abs(p_err) * table["persistence_nm"][t] <= p_sigma)
        print(f"\nWLC fit, {forces[0]:.2f}..{forces[-1]:.1f} pN, {args.dwell} s per step: "
              f"contour |error| {pct(c_err)} %, persistence {pct(p_err)} % (median / 95th); "
              f"contour max {100 * np.nanmax(np.abs(c_err)):.1f} %, signed median "
              f"{100 * np.nanmedian(c_err):+.2f} %; tethers {table['contour_nm'][t].min():.0f}.."
              f"{table['contour_nm'][t].max():.0f} nm; 1 sigma covers the truth: contour "
              f"{c_cover:.0%}, persistence {p_cover:.0%}", flush=True)

        # the same records without the radius correction: the baseline, fitted here
        start = [d for n, d in docs if n == "start" and d.get("plan_name") == "force_extension"][-1]
        offsets = np.asarray(start["bead_radius_offsets_nm"])
        steps_fe = [d["data"] for n, d in docs if n == "event" and "extension-extension_nm" in
                    d["data"] and d["data"].get("extension-force_pn") in set(forces.tolist())]
        steps_fe = steps_fe[-len(forces):]
        F = np.array([st["extension-bead_force_pn"] for st in steps_fe])
        E = np.array([st["extension-extension_nm"] for st in steps_fe])
        S = np.array([st["extension-extension_nm_err"] for st in steps_fe])
        base = np.array([
            wlc_fit(F[:, b], E[:, b] + offsets[b], extension_err_nm=S[:, b]).contour_nm
            for b in range(E.shape[1])
        ]) / table["contour_nm"][t] - 1
        print(f"baseline, the same records without the radius correction: contour |error| "
              f"{pct(base)} %, max {100 * np.nanmax(np.abs(base)):.1f} %", flush=True)

        if args.no_rotation:
            return
        force = 0.6 if low < 0.6 else low * 1.05
        turns = np.arange(-64.0, 64.1, 2.0)
        RE(rotation_extension(mic, turns, force_pn=force, dwell_s=args.dwell))
        buck = [d["data"] for n, d in docs if n == "event" and "buckling-positive_turns" in d["data"]][-1]
        steps = [d["data"] for n, d in docs if n == "event" and "extension-turns" in d["data"]]
        z = steps[-1]["extension-magnet_z_mm"]
        t = tid(buck["buckling-bead_id"])
        pos, neg = world.true_buckling_turns(z)
        errs = np.concatenate([
            np.asarray(buck["buckling-positive_turns"]) - pos[t],
            np.asarray(buck["buckling-negative_turns"]) - neg[t],
        ])
        found = np.isfinite(errs)
        summary = (
            f"{np.median(np.abs(errs[found])):.2f} turns median, "
            f"{np.max(np.abs(errs[found])):.2f} max" if found.any() else "none found"
        )
        print(f"buckling at {force:.2f} pN, {args.dwell} s per turn step: |error| {summary}; "
              f"{int(found.sum())}/{errs.size} found "
              f"(true |n_b| {np.nanmin(pos[t]):.1f}..{np.nanmax(pos[t]):.1f} turns)")
    finally:
        mic.close()
    print(f"total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
