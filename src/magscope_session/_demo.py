"""The demo experiment on the simulated microscope, written to Tiled.

Magnets to a height and beads selected, the reference beads found, a Z-LUT sweep (when
the tracker has no Z-LUT, so z is a number and not NaN), a focus scan with the camera, a
count at two magnet heights with the tracked beads. The bead data are read back from
Tiled: x, y, z of a few beads printed, and a picture (the camera frame with the ROI
boxes, and the beads' x, y, z traces) written to ``<data dir>/demo.png``. Run it with
``magscope demo`` (or ``make demo``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from ophyd_async.core import init_devices

from magscope_devices import InstrumentConfig, load_instrument_config, make_microscope
from magscope_devices._ownership import instance_from_env
from magscope_devices.sim.world import SimParams
from magscope_plans import count_at_heights, find_reference_beads, focus_scan, zlut_sweep
from magscope_plans._run_results import stream_layout

from ._services import DEFAULT_PROXY_IN
from ._setup import make_run_engine, session_metadata, subscribe_tiled_writer, watch_health
from ._tiled_server import DEFAULT_PORT, resolve_tiled

#: beads shown in the printout and the picture
SHOWN_BEADS = 4


@dataclass(frozen=True)
class DemoResult:
    """What the demo made: the run uids, where they are, and how to read them."""

    uids: list[str]
    uri: str
    api_key: str | None
    data_dir: Path
    seconds: float
    png: Path | None = None

    def read_back_code(self) -> str:
        """The lines of Python that read the demo's runs back from Tiled (the key read
        from its owner-only file or the environment, never printed)."""
        from ._tiled_server import API_KEY_FILENAME

        key_file = self.data_dir / API_KEY_FILENAME
        if not self.api_key:
            key_line, key = "", ""
        elif key_file.exists():
            key_line = f"key = open({str(key_file)!r}).read().strip()\n"
            key = ", api_key=key"
        else:
            key_line = 'import os\nkey = os.environ["MAGSCOPE_TILED_API_KEY"]\n'
            key = ", api_key=key"
        return (
            "from tiled.client import from_uri\n"
            f"{key_line}"
            f"run = from_uri({self.uri!r}{key})[{self.uids[-1]!r}]\n"
            'frames = run["primary"]["microscope-camera"].read()  # (20, 1, 768, 1024) uint8\n'
            "x = run[\"primary\"][\"microscope-tracker-x_nm\"].read()  # (20, 10, n_beads) nm"
        )


def _result(outcome: Any) -> Any:
    """The plan's return value (the RunEngine is made with ``call_returns_result=True``)."""
    return outcome.plan_result


@dataclass(frozen=True)
class BeadTraces:
    """Tracked beads of the count runs, read back from Tiled: every frame, one column per
    bead (``bead_ids``); positions nm, times s from the first frame."""

    bead_ids: np.ndarray
    reference: np.ndarray  # bool per bead
    time_s: np.ndarray
    x_nm: np.ndarray
    y_nm: np.ndarray
    z_nm: np.ndarray
    heights_mm: list[float]  # magnet height of each count run
    run: np.ndarray  # per frame, which count run (index into heights_mm) it belongs to
    frame: np.ndarray  # a camera frame of the last count run
    roi_x0_px: np.ndarray
    roi_y0_px: np.ndarray
    roi_size_px: int


def read_traces(client: Any, uids: list[str], reference_ids: list[int]) -> BeadTraces:
    """The count runs' tracks and a camera frame, from Tiled alone."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    zs: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    runs: list[np.ndarray] = []
    heights: list[float] = []
    layout = None
    for uid in uids:
        primary = client[uid]["primary"]
        layout = stream_layout(primary, "microscope-tracker")
        for out, key in ((xs, "x_nm"), (ys, "y_nm"), (zs, "z_nm")):
            data = np.asarray(primary[f"microscope-tracker-{key}"].read(), float)
            out.append(data.reshape(-1, data.shape[-1]))  # (events x frames, beads)
        ts.append(np.asarray(primary["microscope-tracker-frame_index"].read(), float).ravel())
        runs.append(np.full(len(ts[-1]), len(heights)))
        heights.append(float(client[uid].metadata["start"]["magnet_height_mm"]))
    assert layout is not None
    frame = np.asarray(client[uids[-1]]["primary"]["microscope-camera"][0, 0])
    index = np.concatenate(ts)
    return BeadTraces(
        bead_ids=np.asarray(layout.bead_ids),
        reference=np.isin(layout.bead_ids, reference_ids),
        time_s=(index - index[0]) * 0.01,  # frame index at 100 frames/s
        x_nm=np.concatenate(xs), y_nm=np.concatenate(ys), z_nm=np.concatenate(zs),
        heights_mm=heights, run=np.concatenate(runs), frame=frame, roi_x0_px=np.asarray(layout.roi_x0_px),
        roi_y0_px=np.asarray(layout.roi_y0_px), roi_size_px=int(layout.roi_size_px),
    )


def shown_columns(traces: BeadTraces, n: int = SHOWN_BEADS) -> list[int]:
    """Columns of the first ``n`` tethered beads (then reference beads if too few)."""
    order = [i for i in range(len(traces.bead_ids)) if not traces.reference[i]]
    order += [i for i in range(len(traces.bead_ids)) if traces.reference[i]]
    return order[:n]


def plot_traces(traces: BeadTraces, path: Path) -> Path:
    """The camera frame with every ROI (shown beads in colour, reference beads dashed) and
    the shown beads' x, y, z against time, as a PNG (matplotlib's Agg, no screen)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(13, 6.5), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=(1.15, 1))
    image = fig.add_subplot(grid[:, 0])
    image.imshow(traces.frame, cmap="gray")
    image.set_title("camera frame (px), ROIs by bead id")
    shown = shown_columns(traces)
    colours = {col: f"C{k}" for k, col in enumerate(shown)}
    for col, bead in enumerate(traces.bead_ids):
        x0, y0 = traces.roi_x0_px[col], traces.roi_y0_px[col]
        colour = colours.get(col, "yellow")
        image.add_patch(Rectangle(
            (x0 - 0.5, y0 - 0.5), traces.roi_size_px, traces.roi_size_px, fill=False,
            edgecolor=colour, linewidth=1.5 if col in colours else 0.8,
            linestyle="--" if traces.reference[col] else "-",
        ))
        image.text(x0, y0 - 4, str(bead), color=colour, fontsize=7)
    axes = [fig.add_subplot(grid[i, 1]) for i in range(3)]
    for ax, key in zip(axes, ("x_nm", "y_nm", "z_nm"), strict=True):
        values = getattr(traces, key)
        for col in shown:
            trace = values[:, col] - (np.nanmean(values[:, col]) if key != "z_nm" else 0.0)
            for k in range(len(traces.heights_mm)):  # one line per run: no line across gaps
                rows = traces.run == k
                ax.plot(traces.time_s[rows], trace[rows], color=colours[col], lw=0.8,
                        label=f"bead {traces.bead_ids[col]}" if k == 0 else None)
        ax.set_ylabel(f"{key[0]} (nm)" + (" - mean" if key != "z_nm" else ""))
    heights = ", ".join(f"{h:g}" for h in traces.heights_mm)
    axes[0].set_title(f"tracked beads at magnet heights {heights} mm (one run each)")
    axes[0].legend(fontsize=7, ncol=len(shown), loc="upper right")
    axes[-1].set_xlabel("time (s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def print_beads(traces: BeadTraces, out: Callable[[str], None]) -> None:
    """Mean x, y, z (nm) of the shown beads at each magnet height."""
    out(f"   {'bead':>4} {'magnet mm':>9} {'x nm':>9} {'y nm':>9} {'z nm':>8}")
    for col in shown_columns(traces):
        for k, height in enumerate(traces.heights_mm):
            rows = traces.run == k
            x, y, z = (float(np.nanmean(v[rows, col])) for v in
                       (traces.x_nm, traces.y_nm, traces.z_nm))
            ref = " (reference)" if traces.reference[col] else ""
            out(f"   {traces.bead_ids[col]:>4} {height:>9g} {x:>9.1f} {y:>9.1f} {z:>8.1f}{ref}")


def run_demo(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    port: int = DEFAULT_PORT,
    params: SimParams | None = None,
    sample: str = "demo DNA tethers",
    out: Callable[[str], None] = print,
    publish: bool = False,
) -> DemoResult:
    """Run the demo experiment; start (and afterwards stop) the embedded Tiled if needed.
    ``publish``: also send every document to bluesky's 0MQ proxy (``$MAGSCOPE_PROXY_IN``,
    default 127.0.0.1:5577), where a viewer shows the runs' progress."""
    t0 = time.monotonic()
    config = InstrumentConfig.simulated(params) if params else load_instrument_config()
    params = config.sim
    with resolve_tiled(data_dir, port=port) as target:
        out(f"Tiled: {target.uri} ({target.source}), data in {target.data_dir}")
        RE, bec = make_run_engine(session_metadata(
            sample=sample, instrument=config.instrument,
            sim_params=params if config.simulated_camera else None,
        ))
        if bec is not None:
            bec.disable_table()  # the demo prints its own summary
        writer = subscribe_tiled_writer(RE, target)
        if publish:
            from bluesky.callbacks.zmq import Publisher

            RE.subscribe(Publisher(os.environ.get("MAGSCOPE_PROXY_IN", DEFAULT_PROXY_IN)))
        instance = instance_from_env()
        with init_devices():
            microscope = make_microscope(
                config, data_dir=target.detector_data_dir, instance=instance,
                name="microscope",
            )
        health_log = watch_health(
            RE, microscope, data_dir=target.data_dir, instance=instance, writer=writer
        )
        uids: list[str] = []
        try:
            out("1. Magnets to 5 mm; select the beads in the camera image for tracking")
            RE(bps.mv(microscope.magnet_z, 5.0))
            RE(bps.wait_for([microscope.tracker.find_beads]))
            n_beads = len(_result(RE(bps.rd(microscope.tracker.rois))).bead_id)
            out(f"   tracking {n_beads} beads")
            reference_ids = [int(i) for i in _result(RE(find_reference_beads(microscope.tracker)))]
            out(f"   reference beads (stuck to the surface): {reference_ids}")
            if not _result(RE(bps.rd(microscope.tracker.zlut_path))):
                out("2. Z-LUT sweep: focus -2000 .. +10000 nm in 200 nm steps at 1 mm")
                uids.append(_result(RE(
                    zlut_sweep(microscope, -2000, 10000, 200, frames_per_step=1, magnet_z_mm=1.0)
                )))
            out("3. Focus scan -2000 .. +2000 nm in 9 steps, one frame per step")
            uids.append(_result(RE(focus_scan(microscope, -2000.0, 2000.0, 9))))
            out("4. 20 frames and the tracked beads at magnet heights 4.0 mm and 1.5 mm")
            count_uids = _result(RE(count_at_heights(microscope, [4.0, 1.5], num=20)))
            uids.extend(count_uids)
        finally:
            health_log.stop()
            microscope.close()
            sent = writer.close(timeout=60.0)
        if not sent:
            out(
                "Some documents could not reach Tiled; they are kept in "
                f"{target.spool_dir}. Run `magscope tiled replay` once the server is up."
            )
        client = target.client()
        missing = [uid for uid in uids if uid not in client]
        if missing:
            raise RuntimeError(f"runs {missing} did not reach Tiled at {target.uri}")
        out("5. The beads, read back from Tiled (mean over each run; z: height above the "
            "reference beads)")
        traces = read_traces(client, count_uids, reference_ids)
        print_beads(traces, out)
        png = plot_traces(traces, Path(target.data_dir) / "demo.png")
    result = DemoResult(
        uids=uids,
        uri=target.uri,
        api_key=target.api_key,
        data_dir=target.data_dir,
        seconds=time.monotonic() - t0,
        png=png,
    )
    out(f"\nDone in {result.seconds:.1f} s: {len(uids)} runs in Tiled ({target.uri}).")
    for uid in uids:
        out(f"  {uid}")
    out(f"The beads and their traces: {png}")
    if target.source == "embedded-started":
        out("\nThe embedded server has stopped; serve the runs again with `magscope tiled`.")
    out("Read them back in Python:\n")
    out(result.read_back_code())
    return result
