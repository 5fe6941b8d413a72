"""Video beside the tracks: what recording images costs the camera and the tracker.

One command: ``.venv/bin/python benchmarks/bench_recording.py [--seconds S]``. The
simulated microscope runs with 100 beads (64 px ROIs on a 1280 x 1024 sensor, as
``bench_viewer``), tracked by the tracking workers the machine sustains. Each phase is one
record of ``--seconds`` (default 60 s) inside a run (:class:`magscope_plans.TrackRecorder`
with ``microscope.video``), measured in the same run of this script:

The camera plays back 400 pre-rendered simulator frames (2 s at 200 frames/s) in a loop
(:mod:`looped_frames`): the simulator's renderer takes more than a core of this machine
at 200 frames/s by itself, which a real camera does not; ``--live`` renders every frame
instead (the renderer's cost then shows in the late frames of the baselines too).

1. ``tracks @200``: tracks only at 200 frames/s (the baseline of phase 2);
2. ``crops @200``: the ROI crops of all 100 beads at every frame, 200 frames/s;
3. ``tracks @100``: tracks only at 100 frames/s (the baseline of phase 4);
4. ``frames @100``: every whole frame at 100 frames/s.

The camera's driver queues up to ``--driver-buffer`` frames (10, as pylon's default) while
the host is late; only frames beyond that queue are lost.

Per phase: frames the camera lost and delivered late from its queue, frames the tracker
dropped (and their difference to the baseline), frames the video writer lost, raw and stored MB/s, the compression ratio
(raw / stored), the writer's busy MB/s and its CPU (% of one core). The files go to a
temporary folder (``--data-dir``) that is deleted at the end. The machine is shared:
note ``uptime`` with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_BEADS = 100
ROI = 64
WIDTH, HEIGHT = 1280, 1024


def start_microscope(instance: str, data_dir: str, workers: int | None, bit_depth: int,
                     live: bool, ring: int):
    """The simulated microscope with 100 beads; its camera plays back 2 s of pre-rendered
    frames in a loop (``live``: renders every frame, as the default simulator does)."""
    import functools

    import bluesky.plan_stubs as bps
    from bluesky import RunEngine
    from ophyd_async.core import init_devices

    from magscope_devices import make_simulated_microscope, rois_from_centres
    from magscope_devices.sim.world import SimParams

    RE = RunEngine(call_returns_result=True)
    params = SimParams(
        n_tethered=N_BEADS - 4, n_reference=4, width_px=WIDTH, height_px=HEIGHT, seed=3,
        bit_depth=bit_depth,
    )
    first: dict[str, np.ndarray] = {}
    if not live:
        from looped_frames import LoopedFrames, render_frames

        frames_file = Path(data_dir) / "looped-frames.npy"
        t0 = time.monotonic()
        first = render_frames(params, 400, frames_file)
        print(f"rendered 400 frames to play back in {time.monotonic() - t0:.1f} s", flush=True)
    with init_devices():
        mic = make_simulated_microscope(
            params, data_dir=data_dir, instance=instance, frame_rate_hz=200.0,
            ring_capacity=ring, tracking_workers=workers, name="microscope",
        )
        if not live:
            mic.camera.process.source_factory = functools.partial(
                LoopedFrames, str(frames_file), params.bit_depth
            )
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        while mic.camera.process.ring.count < 2:
            time.sleep(0.01)
        if live:
            _, _, index = mic.camera.latest_frame()
            first = mic.truth.frame(index)
        ids = np.arange(params.n_beads)
        RE(bps.mv(mic.tracker.rois, rois_from_centres(
            ids, first["x_nm"] / params.nm_per_px, first["y_nm"] / params.nm_per_px, ROI
        )))
    except BaseException:
        mic.close()
        raise
    return RE, mic


def _writer_cpu_s(mic) -> float:
    import psutil

    process = mic.video.writer.process
    if process is None or not process.alive():
        return 0.0
    times = psutil.Process(process.pid).cpu_times()
    return times.user + times.system


PHASES = {
    "tracks @200": ("tracks", 200.0), "crops @200": ("roi_crops", 200.0),
    "tracks @100": ("tracks", 100.0), "frames @100": ("frames_every_n", 100.0),
}
BASELINES = {"crops @200": "tracks @200", "frames @100": "tracks @100"}


def record_phase(RE, mic, *, mode: str, fps: float, seconds: float) -> dict[str, float]:
    """One record of ``seconds`` at ``fps`` with the video in ``mode``; its figures."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp

    from magscope_plans import TrackRecorder, set_video_mode

    RE(bps.mv(mic.camera.frame_rate_hz, fps))
    time.sleep(1.0)  # the camera settles at the new rate
    recorder = TrackRecorder(mic.tracker, chunk_frames=int(fps), video=mic.video)
    frames = int(round(seconds * fps))

    @bpp.stage_decorator([mic])
    @bpp.run_decorator(md={"purpose": "bench_recording", "mode": mode})
    def plan():
        yield from recorder.record(frames)

    # the mode first (its writer process starts then, a one-time cost): the figures are
    # the record's
    RE(set_video_mode(mic, mode, every_n=1 if mode == "frames_every_n" else None))
    time.sleep(1.0)
    ctl = mic.camera.process.control
    health0 = mic.tracker.service.health()
    late0 = int(ctl["frames_delayed"]), int(ctl["frames_late"])
    cpu0 = _writer_cpu_s(mic) if mode != "tracks" else 0.0
    t0 = time.monotonic()
    RE(plan())
    RE(set_video_mode(mic, "tracks"))
    elapsed = time.monotonic() - t0
    cpu1 = _writer_cpu_s(mic) if mode != "tracks" else 0.0
    health1 = mic.tracker.service.health()
    out: dict[str, float] = {
        "frames": frames,
        "seconds": elapsed,
        "camera_late": int(ctl["frames_late"]) - late0[1],
        "camera_delayed": int(ctl["frames_delayed"]) - late0[0],
        "tracker_dropped": health1.frames_dropped - health0.frames_dropped,
    }
    if mode != "tracks":
        v = mic.video.writer.control
        raw, stored = int(v["raw_bytes"]), int(v["stored_bytes"])
        out.update(
            rows=int(v["rows_written"]),
            video_dropped=int(v["frames_dropped"]),
            raw_mb_s=raw / 1e6 / (frames / fps),
            stored_mb_s=stored / 1e6 / (frames / fps),
            ratio=raw / stored if stored else float("nan"),
            writer_busy_mb_s=raw / 1e6 / float(v["write_seconds"]) if v["write_seconds"] else 0,
            writer_cpu_pct=100.0 * (cpu1 - cpu0) / elapsed,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="record length (s)")
    parser.add_argument("--workers", type=int, default=None, help="tracking workers")
    parser.add_argument("--bit-depth", type=int, default=8, choices=(8, 12, 16),
                        help="the simulated camera's bit depth (8: uint8, else uint16)")
    parser.add_argument("--data-dir", default=None, help="where the files go (temporary)")
    parser.add_argument("--ring", type=int, default=256,
                        help="frames in the camera's ring (the video writer's slack)")
    parser.add_argument("--codec", default="bitshuffle-lz4",
                        help="the video codec (microscope.video.codec)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated phases to run, of: " + ", ".join(PHASES))
    parser.add_argument("--driver-buffer", type=int, default=10,
                        help="frames the camera driver queues while the host is late "
                             "(1: no queue, a frame a period late is lost)")
    parser.add_argument("--live", action="store_true",
                        help="render every frame live (the simulator's own cost included)")
    args = parser.parse_args(argv)
    data_dir = tempfile.mkdtemp(prefix="bench-recording-", dir=args.data_dir)
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores; "
          f"files in {data_dir}; {args.seconds:g} s per record, {N_BEADS} beads, "
          f"{ROI} px ROIs, {WIDTH} x {HEIGHT} px, {args.bit_depth}-bit, camera: "
          f"{'live simulator' if args.live else 'pre-rendered frames in a loop'}, ring of "
          f"{args.ring} frames, driver queue of {args.driver_buffer} frames", flush=True)
    RE, mic = start_microscope(
        f"benchrec{os.getpid()}", data_dir, args.workers, args.bit_depth, args.live, args.ring
    )
    results: dict[str, dict[str, float]] = {}
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if unknown := [p for p in phases if p not in PHASES]:
        parser.error(f"unknown phase(s) {unknown}; choose from {list(PHASES)}")
    mic.camera.process.control["buffer_frames"] = max(1, args.driver_buffer)
    try:
        import bluesky.plan_stubs as bps

        RE(bps.mv(mic.video.codec, args.codec))
        for name in phases:
            mode, fps = PHASES[name]
            results[name] = record_phase(RE, mic, mode=mode, fps=fps, seconds=args.seconds)
            r = results[name]
            line = (f"{name:12s} {r['frames']:6d} frames in {r['seconds']:5.1f} s: camera lost "
                    f"{r['camera_late']} (delivered late from its queue "
                    f"{r['camera_delayed']}), tracker dropped {r['tracker_dropped']}")
            if "rows" in r:
                line += (f"; video {r['rows']} rows, lost {r['video_dropped']}, raw "
                         f"{r['raw_mb_s']:.1f} MB/s, stored {r['stored_mb_s']:.1f} MB/s, "
                         f"ratio {r['ratio']:.2f}, writer busy {r['writer_busy_mb_s']:.0f} "
                         f"MB/s raw, writer CPU {r['writer_cpu_pct']:.0f} %")
            print(line, flush=True)
            for path in Path(data_dir).glob("*.h5"):  # keep the disk free between phases
                path.unlink()
    finally:
        mic.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    print()
    print(f"codec {args.codec}")
    print(f"{'record':12s} {'lost':>5s} {'Δlost':>6s} {'dropped':>8s} {'Δdropped':>9s} "
          f"{'video lost':>10s} {'raw MB/s':>9s} {'stored':>7s} {'ratio':>6s}")
    for name, base in BASELINES.items():
        if name not in results:
            continue
        r = results[name]
        b = results.get(base, {"camera_late": 0, "tracker_dropped": 0})
        print(f"{name:12s} {r['camera_late']:5d} {r['camera_late'] - b['camera_late']:+6d} "
              f"{r['tracker_dropped']:8d} {r['tracker_dropped'] - b['tracker_dropped']:+9d} "
              f"{r['video_dropped']:10d} {r['raw_mb_s']:9.1f} {r['stored_mb_s']:7.1f} "
              f"{r['ratio']:6.2f}")
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
