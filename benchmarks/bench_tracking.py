"""Bead tracking kernels: accuracy against the simulator's ground truth, and throughput.

Run:  .venv/bin/python benchmarks/bench_tracking.py [--rois N] [--repeats K] [--quick]

Data: the simulated microscope (``magscope_devices.sim``) renders single beads (radius
1.4 um, 100 nm/px, default camera: ~4000 e background, 8 bit at 32 e/ADU) in 64 x 64 px
ROIs at random sub-pixel positions and random defocus in +-3.5 um. The Z-LUT is built by
``build_zlut`` from a simulated focus sweep (-3.6 .. +3.6 um at 50 nm steps, 5 images
per step: 145 planes).

Prints:
- accuracy: XY error r.m.s. (px), XY bias (px; the largest mean error in any tenth of
  the sub-pixel phase, noisy images, and the largest error of a noise-free sweep of the
  sub-pixel phase), Z error r.m.s. (nm), overall and per 1 um slice of defocus;
- throughput of ``track`` (XY + profile + Z with the 145-plane LUT): median ROIs/s of
  the numba kernel (all numba threads) and of the plain-NumPy reference
  (``track_reference``) measured in the same run, and their ratio.

The machine is shared: the throughput is the median of ``--repeats`` timed runs, and
the load average is printed alongside, with the process CPU time per ROI (less
sensitive to other load) and the ROIs/s that CPU time gives on two idle cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np

from magscope_devices.sim import FrameTruth, Renderer, SimParams
from magscope_tracking import build_zlut, track, track_reference, warmup

ROI = 64
NM_PER_PX = 100.0


def _truth(params: SimParams, x_px, y_px, dz_nm) -> FrameTruth:
    x = np.asarray(x_px, float) * params.nm_per_px
    y = np.asarray(y_px, float) * params.nm_per_px
    z = np.asarray(dz_nm, float)
    n = x.size
    return FrameTruth(
        t_s=0.0, exposure_s=params.exposure_s, bead_id=np.arange(n),
        tethered=np.zeros(n, bool), radius_nm=np.full(n, 1400.0), x_nm=x, y_nm=y, z_nm=z,
        x0_nm=x, y0_nm=y, z0_nm=z, force_pn=np.full(n, np.nan), extension_nm=np.zeros(n),
        drift_x_nm=0.0, drift_y_nm=0.0, drift_z_nm=0.0, magnet_z_mm=5.0, magnet_turns=0.0,
        focus_nm=0.0,
    )


def render_rois(dz_nm, offsets, *, seed: int, expected: bool = False, grid: int = 16):
    """(n, ROI, ROI) ROIs of one bead each at (ROI-1)/2 + offsets, and the true (x, y)."""
    dz = np.asarray(dz_nm, float)
    n = dz.size
    off = np.broadcast_to(np.asarray(offsets, float), (n, 2))
    params = SimParams(width_px=ROI * grid, height_px=ROI * grid, n_tethered=0,
                       n_reference=1, nm_per_px=NM_PER_PX, seed=seed)
    renderer = Renderer(params, seed=seed)
    out = np.empty((n, ROI, ROI), np.float32 if expected else params.dtype)
    c = (ROI - 1) / 2.0
    for s in range(0, n, grid * grid):
        m = min(grid * grid, n - s)
        ox = (np.arange(m) % grid) * ROI
        oy = (np.arange(m) // grid) * ROI
        truth = _truth(params, ox + c + off[s : s + m, 0], oy + c + off[s : s + m, 1],
                       dz[s : s + m])
        if expected:
            frame = renderer.expected_electrons(truth) / np.float32(params.gain_e_per_adu)
        else:
            frame = renderer.render(truth)
        for k in range(m):
            out[s + k] = frame[oy[k] : oy[k] + ROI, ox[k] : ox[k] + ROI]
    return out, np.column_stack([c + off[:, 0], c + off[:, 1]])


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def _timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU times (s) of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, default=20000, help="ROIs per timed numba run")
    ap.add_argument("--repeats", type=int, default=9, help="timed runs (median quoted)")
    ap.add_argument("--ref-rois", type=int, default=300, help="ROIs per NumPy run")
    ap.add_argument("--test-rois", type=int, default=4000, help="ROIs scored for accuracy")
    ap.add_argument("--quick", action="store_true", help="fewer ROIs and repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.rois, args.repeats, args.ref_rois, args.test_rois = 4000, 3, 60, 1000

    t0 = time.perf_counter()
    took = warmup(dtypes=(np.uint8, np.float32))
    print(f"warm-up (compile or load kernels): {took:.1f} s; numba threads: "
          f"{numba.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")

    # Z-LUT from a simulated sweep: -3.6 .. +3.6 um, 50 nm steps, 5 images per step
    z_planes = np.arange(-3600.0, 3600.0 + 1.0, 50.0)
    z_sweep = np.repeat(z_planes, 5)
    images, _ = render_rois(z_sweep, np.array([0.23, -0.31]), seed=101)
    t1 = time.perf_counter()
    lut = build_zlut(images, z_sweep, nm_per_px=NM_PER_PX)
    build_s = time.perf_counter() - t1
    print(f"Z-LUT: {lut.n_planes} planes x {lut.n_bins} bins of {lut.bin_px} px from "
          f"{images.shape[0]} sweep images (built in {build_s:.2f} s)")

    # accuracy: noisy 8-bit ROIs, random defocus and sub-pixel position
    rng = np.random.default_rng(102)
    dz = rng.uniform(-3500.0, 3500.0, args.test_rois)
    stack, xy = render_rois(dz, rng.uniform(-0.5, 0.5, (dz.size, 2)), seed=103)
    res = track(stack, lut)
    lost = int(res.lost.sum())
    exy = np.column_stack([res.x_px, res.y_px]) - xy
    ez = res.z_nm - dz
    bias_noisy = 0.0
    worst_se = 0.0
    for axis in (0, 1):
        phase = xy[:, axis] - np.floor(xy[:, axis])
        bins = np.minimum((phase * 10).astype(int), 9)
        for b in range(10):
            e = exy[bins == b, axis]
            bias_noisy = max(bias_noisy, abs(float(np.nanmean(e))))
            worst_se = max(worst_se, float(np.nanstd(e) / np.sqrt(e.size)))
    # pixel locking: noise-free images, sub-pixel phase swept
    phases = np.linspace(-0.5, 0.5, 21)
    worst_nf = 0.0
    for d in (-3500.0, -2000.0, -800.0, 0.0, 800.0, 2000.0, 3500.0):
        nf, nf_xy = render_rois(np.full(phases.size, d),
                                np.column_stack([phases, 0.37 * phases[::-1]]), seed=104,
                                expected=True)
        r = track(nf)
        worst_nf = max(worst_nf, float(np.abs(np.column_stack([r.x_px, r.y_px]) - nf_xy).max()))

    print()
    print(f"accuracy, {dz.size} ROIs (8 bit, 64 px, 100 nm/px, 1.4 um beads), {lost} lost")
    print(f"{'defocus (nm)':>16} {'n':>6} {'XY rms (px)':>12} {'Z rms (nm)':>11} {'Z mean (nm)':>12}")
    edges = np.arange(-3500.0, 3501.0, 1000.0)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (dz >= lo) & (dz < hi)
        print(f"{lo:>7.0f} .. {hi:<6.0f} {m.sum():>6} {_rms(exy[m]):>12.4f} "
              f"{_rms(ez[m]):>11.2f} {np.mean(ez[m]):>12.2f}")
    print(f"{'all':>16} {dz.size:>6} {_rms(exy):>12.4f} {_rms(ez):>11.2f} {np.mean(ez):>12.2f}")
    print(f"XY bias: largest mean error per tenth of sub-pixel phase {bias_noisy:.4f} px "
          f"(standard error {worst_se:.4f} px); noise-free phase sweep max |error| "
          f"{worst_nf:.4f} px")
    print(f"targets: XY rms <= 0.010 px, bias <= 0.002 px, Z rms <= 5 nm -> "
          f"XY {_rms(exy):.4f} px, bias {worst_nf:.4f} px (noise-free) / {bias_noisy:.4f} px "
          f"(noisy), Z {_rms(ez):.2f} nm")

    # throughput: XY + profile + Z, 64 px ROIs, the 145-plane LUT
    dzt = rng.uniform(-3400.0, 3400.0, args.rois)
    big, _ = render_rois(dzt, rng.uniform(-0.5, 0.5, (dzt.size, 2)), seed=105)
    track(big[:100], lut)
    fast, fast_cpu = _timed(lambda: track(big, lut), args.repeats)
    small = big[: args.ref_rois]
    ref, ref_cpu = _timed(lambda: track_reference(small, lut), max(3, args.repeats // 3))
    check = track(small, lut)
    ref_res = track_reference(small, lut)
    parity = float(np.nanmax(np.abs(check.z_nm - ref_res.z_nm)))
    fast_rate = big.shape[0] / np.median(fast)
    ref_rate = small.shape[0] / np.median(ref)
    print()
    print(f"throughput of track (XY + profile + Z, {lut.n_planes}-plane LUT), median of "
          f"{len(fast)} / {len(ref)} runs; load average {os.getloadavg()[0]:.2f}")
    print(f"{'implementation':>16} {'ROIs/run':>9} {'ROIs/s':>10} {'best ROIs/s':>12} "
          f"{'CPU us/ROI':>11}")
    print(f"{'numba':>16} {big.shape[0]:>9} {fast_rate:>10.0f} "
          f"{big.shape[0] / min(fast):>12.0f} {1e6 * np.median(fast_cpu) / big.shape[0]:>11.1f}")
    print(f"{'numpy reference':>16} {small.shape[0]:>9} {ref_rate:>10.0f} "
          f"{small.shape[0] / min(ref):>12.0f} {1e6 * np.median(ref_cpu) / small.shape[0]:>11.1f}")
    print(f"numba / numpy = {fast_rate / ref_rate:.0f}x (wall), "
          f"{np.median(ref_cpu) / small.shape[0] / (np.median(fast_cpu) / big.shape[0]):.0f}x "
          f"(CPU time); numba vs numpy z agree to {parity:.1e} nm")
    idle = 2 * big.shape[0] / np.median(fast_cpu)
    print(f"target >= 30000 ROIs/s -> {fast_rate:.0f} ROIs/s measured; CPU time per ROI "
          f"gives {idle:.0f} ROIs/s on 2 otherwise idle cores")
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
