"""The live viewer's cost: display rate, its CPU, and whether it slows acquisition.

One command: ``.venv/bin/python benchmarks/bench_viewer.py [--seconds S]``. The simulated
microscope runs with 100 beads (64 px ROIs, 70 px apart, on a 1280 x 1024
sensor: 1024 x 768 does not hold them) at 200 frames/s,
tracked by the tracking workers the machine sustains (``--workers``, default one per
core). Three phases, measured in the same run:

1. ``in-process``: a :class:`~magscope_viewer.ViewerWindow` (offscreen) in this process,
   its :meth:`refresh` called in a loop: ms a refresh (median; split into refreshes that
   redraw the plots and those that only show the camera).
2. ``without viewer``: ``--seconds`` of acquisition alone: camera frames/s and late
   frames, frames tracked/s and dropped; measured before and again after phase 3, and
   their mean is the baseline (the machine's load drifts).
3. ``with viewer``: the same with ``python -m magscope_viewer --instance NAME`` running
   as its own process (``QT_QPA_PLATFORM=offscreen``): its display rate (refreshes/s,
   median of 1 s windows, from the viewer's ``--report-json``) and CPU (% of one core,
   psutil), and the late/dropped frames with and without the viewer and their difference.

``--profile`` prints the cProfile of the in-process refreshes instead (top 30 by
cumulative time). The machine is shared: note ``uptime`` with the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_BEADS = 100
FPS = 200.0
ROI = 64
#: Sensor (px): 100 beads 70 px apart (random placement) do not fit on 1024 x 768.
WIDTH, HEIGHT = 1280, 1024


def start_microscope(instance: str, n_beads: int, fps: float, workers: int | None):
    """The simulated microscope of ``instance`` with ``n_beads`` beads tracked at ``fps``."""
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from ophyd_async.core import init_devices

    from magscope_devices import make_simulated_microscope, rois_from_centres
    from magscope_devices.sim.world import SimParams

    RE = RunEngine()
    params = SimParams(
        n_tethered=n_beads - 4, n_reference=4, width_px=WIDTH, height_px=HEIGHT, seed=3
    )
    with init_devices():
        mic = make_simulated_microscope(
            params, data_dir=tempfile.mkdtemp(prefix="bench-viewer-"), instance=instance,
            frame_rate_hz=fps, tracking_workers=workers, name="microscope",
        )
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        while mic.camera.process.ring.count < 2:
            time.sleep(0.01)
        _, _, index = mic.camera.latest_frame()
        truth = mic.truth.frame(index)
        ids = np.arange(params.n_beads)
        RE(bps.mv(mic.tracker.rois, rois_from_centres(
            ids, truth["x_nm"] / params.nm_per_px, truth["y_nm"] / params.nm_per_px, ROI
        )))
    except BaseException:
        mic.close()
        raise
    return mic


def _microscope_processes() -> dict[str, list]:
    """psutil processes of this benchmark's camera and tracking workers."""
    import psutil

    out: dict[str, list] = {"camera": [], "workers": []}
    for child in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "magscope_devices._acquisition" in cmd:
            out["camera"].append(child)
        elif "magscope_tracking._worker" in cmd:
            out["workers"].append(child)
    return out


def _cpu_s(procs: list) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except Exception:  # gone (a restarted worker): its time is lost
            continue
        total += times.user + times.system
    return total


def _counters(mic) -> dict[str, float]:
    h = mic.tracker.service.health()
    procs = _microscope_processes()
    return {
        "camera_cpu_s": _cpu_s(procs["camera"]),
        "workers_cpu_s": _cpu_s(procs["workers"]),
        "t": time.monotonic(),
        "acquired": int(mic.camera.process.control["frames_acquired"]),
        "late": int(mic.camera.process.control["frames_late"]),
        "tracked": h.frames_tracked,
        "dropped": h.frames_dropped,
    }


def measure_acquisition(mic, seconds: float, during=None) -> dict[str, float]:
    """Camera and tracker counters over ``seconds`` (``during()`` is called every 0.5 s)."""
    a = _counters(mic)
    end = a["t"] + seconds
    while time.monotonic() < end:
        time.sleep(0.5)
        if during is not None:
            during()
    b = _counters(mic)
    dt = b["t"] - a["t"]
    return {
        "seconds": dt,
        "camera_fps": (b["acquired"] - a["acquired"]) / dt,
        "late": b["late"] - a["late"],
        "tracked_fps": (b["tracked"] - a["tracked"]) / dt,
        "dropped": b["dropped"] - a["dropped"],
        "camera_cpu_pct": 100.0 * (b["camera_cpu_s"] - a["camera_cpu_s"]) / dt,
        "workers_cpu_pct": 100.0 * (b["workers_cpu_s"] - a["workers_cpu_s"]) / dt,
    }


def in_process(instance: str, seconds: float, profile: bool) -> dict[str, float]:
    """Median ms of ``ViewerWindow.refresh`` in this process (offscreen), for ``seconds``."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt5 import QtWidgets

    from magscope_viewer import LiveSource, ViewerWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    win = ViewerWindow(LiveSource(instance), refresh_hz=0)
    win.resize(1400, 900)
    win.show()
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # warm up: history filled, items created
        win.refresh()
        app.processEvents()
        time.sleep(0.02)
    times, cpu, plotted = [], [], []
    prof = cProfile.Profile() if profile else None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        before = win._last_plot
        t0, c0 = time.perf_counter(), time.thread_time()
        if prof is not None:
            prof.enable()
        win.refresh()
        app.processEvents()  # the paint the refresh asked for
        if prof is not None:
            prof.disable()
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        plotted.append(win._last_plot != before)
        time.sleep(max(0.0, 1.0 / 30 - times[-1]))
    win.close()
    if prof is not None:
        pstats.Stats(prof).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(30)
    ms = np.asarray(times) * 1e3
    cpu_ms = np.asarray(cpu) * 1e3
    mask = np.asarray(plotted)
    return {
        "cpu_ms_median": float(np.median(cpu_ms)),
        "cpu_ms_plot": float(np.median(cpu_ms[mask])) if mask.any() else float("nan"),
        "cpu_ms_camera_only": float(np.median(cpu_ms[~mask])) if (~mask).any() else float("nan"),
        "refreshes": len(ms),
        "ms_median": float(np.median(ms)),
        "ms_p90": float(np.percentile(ms, 90)),
        "ms_plot": float(np.median(ms[mask])) if mask.any() else float("nan"),
        "ms_camera_only": float(np.median(ms[~mask])) if (~mask).any() else float("nan"),
        "plot_fraction": float(mask.mean()),
    }


def with_viewer(mic, instance: str, seconds: float) -> tuple[dict, dict]:
    """Acquisition counters while the viewer runs as its own process; and the viewer's
    report (display rate, CPU % of one core)."""
    import psutil

    report = Path(tempfile.mkdtemp(prefix="bench-viewer-")) / "report.json"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    warmup = 4.0
    cmd = [sys.executable, "-m", "magscope_viewer", "--instance", instance,
           "--report-json", str(report), "--quit-after", str(warmup + seconds + 1.0)]
    proc = subprocess.Popen(cmd, env=env)
    try:
        ps = psutil.Process(proc.pid)
        time.sleep(warmup)  # start-up (imports, first frames) is not what is measured
        cpu0, t0 = ps.cpu_times(), time.monotonic()
        samples: list[float] = []
        last = [cpu0, t0]

        def sample() -> None:
            cpu, now = ps.cpu_times(), time.monotonic()
            used = (cpu.user + cpu.system) - (last[0].user + last[0].system)
            samples.append(100.0 * used / (now - last[1]))
            last[:] = [cpu, now]

        acq = measure_acquisition(mic, seconds, during=sample)
        cpu1, t1 = ps.cpu_times(), time.monotonic()
        acq["viewer_cpu_pct"] = 100.0 * (
            (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        ) / (t1 - t0)
        acq["viewer_cpu_pct_median_0p5s"] = float(np.median(samples)) if samples else np.nan
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    view = json.loads(report.read_text()) if report.exists() else {}
    return acq, view


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase (s)")
    ap.add_argument("--beads", type=int, default=N_BEADS)
    ap.add_argument("--fps", type=float, default=FPS, help="camera frame rate (frames/s)")
    ap.add_argument("--workers", type=int, default=None,
                    help="tracking worker processes (default: one per core)")
    ap.add_argument("--in-process-only", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the in-process refreshes (implies --in-process-only)")
    args = ap.parse_args(argv)
    instance = f"bench-viewer-{os.getpid()}"
    load = os.getloadavg()
    mic = start_microscope(instance, args.beads, args.fps, args.workers)
    try:
        time.sleep(2.0)
        workers = mic.tracker.service.n_workers
        print(f"simulated microscope: {args.beads} beads, {ROI} px ROIs, {WIDTH} x {HEIGHT} px, "
              f"{args.fps:.0f} frames/s, {workers} tracking workers; load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
        ip = in_process(instance, min(args.seconds, 10.0), args.profile)
        print(f"in-process ViewerWindow.refresh (+ paint): median {ip['ms_median']:.1f} ms, "
              f"p90 {ip['ms_p90']:.1f} ms over {ip['refreshes']} refreshes; with plots "
              f"redrawn {ip['ms_plot']:.1f} ms ({100 * ip['plot_fraction']:.0f} % of "
              f"refreshes), camera only {ip['ms_camera_only']:.1f} ms")
        print(f"  CPU of the GUI thread a refresh: median {ip['cpu_ms_median']:.1f} ms; with "
              f"plots {ip['cpu_ms_plot']:.1f} ms, camera only {ip['cpu_ms_camera_only']:.1f} ms")
        if args.profile or args.in_process_only:
            return 0
        before = measure_acquisition(mic, args.seconds)
        viewed, report = with_viewer(mic, instance, args.seconds)
        after = measure_acquisition(mic, args.seconds)
        # the baseline: the mean of the phases without the viewer before and after it
        alone = {k: (before[k] + after[k]) / 2 for k in before}
        print(f"{'':28}{'camera fr/s':>12}{'late':>8}{'tracked fr/s':>14}{'dropped':>9}"
              f"{'camera CPU':>12}{'workers CPU':>13}")
        for label, r in (("without viewer (before)", before), ("with viewer", viewed),
                         ("without viewer (after)", after)):
            print(f"{label:28}{r['camera_fps']:12.1f}{r['late']:8.0f}{r['tracked_fps']:14.1f}"
                  f"{r['dropped']:9.0f}{r['camera_cpu_pct']:11.0f}%{r['workers_cpu_pct']:12.0f}%")
        print(f"{'with - mean without':28}{viewed['camera_fps'] - alone['camera_fps']:12.1f}"
              f"{viewed['late'] - alone['late']:8.1f}"
              f"{viewed['tracked_fps'] - alone['tracked_fps']:14.1f}"
              f"{viewed['dropped'] - alone['dropped']:9.1f}")
        hz = report.get("display_hz_median", float("nan"))
        print(f"viewer process: display {hz:.1f} Hz (median of 1 s windows), refresh "
              f"{report.get('refresh_ms_median', float('nan')):.1f} ms median; CPU "
              f"{viewed['viewer_cpu_pct']:.1f} % of one core (psutil, whole phase; median of "
              f"0.5 s samples {viewed['viewer_cpu_pct_median_0p5s']:.1f} %)")
        ok = hz >= 30.0 and viewed["viewer_cpu_pct"] < 25.0
        print(f"targets (>= 30 Hz, < 25 % of a core): {'met' if ok else 'NOT met'}; "
              f"late/dropped with the viewer {viewed['late']}/{viewed['dropped']}, without "
              f"{before['late']}/{before['dropped']} before and {after['late']}/"
              f"{after['dropped']} after")
        print("(CPU: % of one core; the simulated camera renders every frame itself, so on a "
              "saturated machine any other load, the viewer's too, costs it frames)")
    finally:
        mic.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
