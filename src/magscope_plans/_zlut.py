"""Z look-up tables: the sweep that builds one, and loading one from a past run."""


import dataclasses
import functools
import json
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.utils import Msg
from cycler import cycler
from ophyd_async.core import Array1D, StandardReadableFormat, soft_signal_rw

from magscope_devices._bead_layout import BeadLayoutRecord
from magscope_devices._bead_tracker import BeadHeights, BeadRois
from magscope_devices._microscope import Microscope
from magscope_tracking import ZLUT, build_zlut
from magscope_tracking.height_anchor import height_offsets_nm

from ._arguments import PlanArgs, PlanArgumentError, PreflightError
from ._bead_match import MAX_ROI_SHIFT_PX, match_beads
from ._locks import focus_lock_suspended
from ._preflight import check_axis_limits, check_microscope, read_layout
from ._results import connect_replayably
from ._run_results import zlut_from_run, zlut_heights_from_run
from ._safety import check_safe_height, with_safe_finish


class ZLUTImages(BeadLayoutRecord):
    """One focus step of a Z-LUT sweep, as signals, so the ROI images go into the run.

    ``images`` (beads, frames, h, w), the camera's dtype: each bead's ROI in the frames of
    the step (beads in the order of the ``bead_ids`` configuration); ``focus_offset_nm``:
    the focus relative to where the sweep started (nm); ``frame_index`` (frames,): the
    camera frame numbers.
    """

    def __init__(self, name: str = "zlut_images") -> None:
        with self.add_children_as_readables():
            self.images = soft_signal_rw(np.ndarray, np.zeros((0, 0, 0, 0), np.uint16))
            self.focus_offset_nm = soft_signal_rw(float, 0.0, units="nm")
            self.frame_index = soft_signal_rw(Array1D[np.int64], np.zeros(0, np.int64))
        super().__init__(name=name)


class ZLUTRecord(BeadLayoutRecord):
    """The Z-LUT a sweep built, as signals, so it goes into the run as an event.

    ``z_nm`` (planes,): bead height relative to the focal plane (nm; 0 at the focus where
    the sweep started); ``profiles`` (beads, planes, bins): radial profiles; ``height_nm``
    (beads,): each bead's height above the reference beads at the sweep (nm; NaN where it
    could not be anchored or without reference beads); ``created`` (UNIX s). Configuration:
    the bead layout (:mod:`magscope_devices._bead_layout`; ``bead_ids`` are the profiles'
    beads), ``bin_px``, the radial bin spacing (px), and ``focal_shift``, the focal-plane
    travel per nm of focus travel the heights were scaled with.
    """

    def __init__(self, name: str = "zlut") -> None:
        with self.add_children_as_readables():
            self.z_nm = soft_signal_rw(np.ndarray, np.zeros(0), units="nm")
            self.profiles = soft_signal_rw(np.ndarray, np.zeros(0))
            self.height_nm = soft_signal_rw(np.ndarray, np.zeros(0), units="nm")
            self.created = soft_signal_rw(float, 0.0, units="s")
        with self.add_children_as_readables(StandardReadableFormat.CONFIG_SIGNAL):
            self.bin_px = soft_signal_rw(float, 0.0, units="px")
            self.focal_shift = soft_signal_rw(float, 1.0)
        super().__init__(name=name)


def zlut_cache_path(data_dir: Path | str, uid: str) -> Path:
    """Where the Z-LUT of run ``uid`` is cached (a file rebuilt from the run when gone)."""
    return Path(data_dir) / f"zlut-{uid}.npz"


def zlut_sweep(
    microscope: Microscope,
    start_nm: float,
    stop_nm: float,
    step_nm: float,
    *,
    frames_per_step: int = 5,
    beads: Sequence[int] | None = None,
    magnet_z_mm: float | None = None,
    reference_beads: Sequence[int] | None = None,
    settle_s: float = 0.02,
    md: dict[str, Any] | None = None,
) -> Generator[Msg, Any, str]:
    """Step the focus from ``start_nm`` to ``stop_nm`` (nm, relative to where it is) in
    steps of ``step_nm``, collect ``frames_per_step`` ROI images of every selected bead at
    each step, build a per-bead Z-LUT, store it in the run and load it into the tracker.

    :param beads: bead ids to build the Z-LUT for (default: every bead of the ROI table).
    :param magnet_z_mm: move the magnets here first (mm): sweep at high force so tethered
        beads hold still; they go back to a safe height at the end.
    :param reference_beads: ids of beads stuck to the surface (default: the tracker's
        ``reference_beads``). When some are swept, every bead's height above them is found
        by matching its profiles against theirs (:func:`height_offsets_nm`) and set as the
        tracker's ``height_offsets``: tracked z is then the height above the reference
        beads, and extensions follow. The sweep must span the tethers: e.g. from 2 um below
        to 10 um above the reference beads' focus for tethers up to 8 um.
    :param settle_s: wait after each focus step (s).

    A ``bluesky.plans.list_scan`` (``scan_nd``) of the focus with a per-step hook that grabs the ROI
    images. Stream ``primary``: per step the focus and the ROI images
    (:class:`ZLUTImages`: ``zlut_images-images``, ``-focus_offset_nm``, ``-frame_index``),
    so the Z-LUT can be rebuilt from the run; stream ``zlut``, one event: the Z-LUT
    (:class:`ZLUTRecord`). Both streams' configuration holds the beads' layout (ids, ROI
    origins, ROI size, nm/px). After the run the Z-LUT is cached in the tracker's data
    folder as ``zlut-<uid>.npz`` (:func:`zlut_cache_path`) and loaded into the tracker;
    :func:`load_zlut` reloads it later. The focus returns to where it started. Returns
    the run uid.
    """
    plan = "zlut_sweep"
    args = PlanArgs(plan)
    start_nm = args.real("start_nm", start_nm, units="nm")
    stop_nm = args.real("stop_nm", stop_nm, units="nm")
    step_nm = args.positive("step_nm", step_nm, units="nm")
    frames_per_step = args.count(
        "frames_per_step", frames_per_step, minimum=1, what="a whole number of frames"
    )
    wanted = args.bead_ids("beads", beads)
    magnet_z_mm = args.optional_real("magnet_z_mm", magnet_z_mm, units="mm")
    wanted_refs = args.bead_ids("reference_beads", reference_beads)
    settle_s = args.non_negative("settle_s", settle_s, units="s")
    md = args.metadata("md", md)
    lo, hi = sorted((start_nm, stop_nm))
    offsets = np.arange(lo, hi + step_nm / 2, step_nm)
    if offsets.size < 5:
        raise PlanArgumentError(
            plan, "step_nm", step_nm,
            f"gives {offsets.size} focus steps from {lo:g} to {hi:g} nm",
            "at least 5 steps: a Z-LUT needs at least 5 planes",
        )
    check_microscope(microscope, plan, tracker=True)
    tracker = microscope.tracker
    def body() -> Generator[Msg, Any, str]:
        rois: BeadRois = yield from bps.rd(tracker.rois)
        table_ids = np.asarray(rois.bead_id, dtype=np.int64)
        selected = table_ids
        if wanted is not None:
            missing = sorted(set(wanted) - set(table_ids.tolist()))
            if missing:
                raise PreflightError(
                    f"{plan}: beads {missing} are not in the tracker's ROI table "
                    f"{table_ids.tolist()}"
                )
            selected = table_ids[np.isin(table_ids, wanted)]  # in the ROI table's order
        if selected.size == 0:
            raise PreflightError(
                f"{plan}: no beads selected: set microscope.tracker.rois or run "
                "`yield from bps.wait_for([microscope.tracker.find_beads])` first"
            )
        focus0 = yield from bps.rd(microscope.focus)
        focal_shift = float((yield from bps.rd(microscope.focus.focal_shift)))
        f_lo = yield from bps.rd(microscope.focus.low_limit)
        f_hi = yield from bps.rd(microscope.focus.high_limit)
        if focus0 + lo < f_lo or focus0 + hi > f_hi:
            raise PlanArgumentError(
                plan, "start_nm, stop_nm", (start_nm, stop_nm),
                f"reach focus {focus0 + lo:g} .. {focus0 + hi:g} nm, outside the focus limits "
                f"[{f_lo:g}, {f_hi:g}] nm",
                f"a range within [{f_lo - focus0:g}, {f_hi - focus0:g}] nm of the focus now",
            )
        if magnet_z_mm is not None:
            yield from check_axis_limits(
                microscope.magnet_z, [magnet_z_mm], plan=plan, argument="magnet_z_mm",
                units="mm", what="magnet height", single=True,
            )
        if wanted_refs is None:
            refs = np.asarray((yield from bps.rd(tracker.reference_beads)), dtype=np.int64)
        else:
            refs = np.asarray(wanted_refs, dtype=np.int64)
        refs = refs[np.isin(refs, selected)]
        layout = dataclasses.replace(
            (yield from read_layout(tracker)).select(selected), zlut_uid=""
        )  # the images are not tracked: no Z-LUT gave them z
        nm_per_px = layout.nm_per_px
        images = ZLUTImages(name="zlut_images")
        record = ZLUTRecord(name="zlut")
        yield from connect_replayably(images, record)
        yield from bps.mv(*images.layout_moves(layout))
        yield from bps.mv(*record.layout_moves(layout))
        _md = {
            "plan_name": "zlut_sweep",
            "plan_args": {
                "start_nm": start_nm, "stop_nm": stop_nm, "step_nm": step_nm,
                "frames_per_step": frames_per_step, "beads": selected.tolist(),
                "magnet_z_mm": magnet_z_mm,
            },
            "zlut_bead_ids": selected.tolist(),
            "bead_rois": layout.rois_metadata(),
            "reference_bead_ids": refs.tolist(),
            "focus_start_nm": focus0,
            "focal_shift": focal_shift,
        }
        _md.update(md or {})
        stacks: list[np.ndarray] = []
        built: list[tuple[ZLUT, np.ndarray]] = []

        def per_step(detectors, step, pos_cache, take_reading=None) -> Generator[Msg, Any, None]:
            yield from bps.move_per_step(step, pos_cache)
            yield from bps.sleep(settle_s)
            (task,) = yield from bps.wait_for(
                [functools.partial(tracker.grab_rois, frames_per_step)]
            )
            grabbed, ids, frame_index = task.result()
            stack = grabbed[np.isin(ids, selected)]
            stacks.append(stack)
            yield from bps.mv(
                images.images, stack, images.focus_offset_nm, float(step[microscope.focus] - focus0),
                images.frame_index, np.asarray(frame_index, np.int64),
            )
            yield from (take_reading or bps.trigger_and_read)([*detectors, *step])

        def build_and_record() -> Generator[Msg, Any, None]:
            # bead height minus the focal plane, in nm of focus travel: the LUT scales
            # it to the sample's nm with the focal shift
            z_rel = np.repeat(-offsets, frames_per_step)
            lut = build_zlut(
                np.concatenate(stacks, axis=1), z_rel, nm_per_px=nm_per_px, bead_ids=selected,
                focal_shift=focal_shift,
            )
            heights = (
                height_offsets_nm(lut, refs) if refs.size else np.full(lut.n_beads, np.nan)
            )
            built.append((lut, heights))
            yield from bps.mv(
                record.z_nm, np.asarray(lut.z_nm, float),
                record.profiles, np.asarray(lut.profiles, float),
                record.height_nm, heights, record.created, float(lut.created),
                record.bin_px, float(lut.bin_px), record.focal_shift, lut.focal_shift,
            )
            yield from bps.trigger_and_read([record], name="zlut")

        def sweep() -> Generator[Msg, Any, str]:
            if magnet_z_mm is not None:
                yield from bps.mv(microscope.magnet_z, magnet_z_mm)
            scan = bp.scan_nd(
                [images], cycler(microscope.focus, list(focus0 + offsets)), per_step=per_step,
                md=_md,
            )
            uid = yield from before_close_run(scan, build_and_record)
            lut, heights = built[-1]
            lut = dataclasses.replace(lut, source=uid)
            path = zlut_cache_path(tracker.data_dir, uid)
            lut.save(path)
            save_heights(path, lut.bead_ids, heights, refs)
            yield from bps.mv(tracker.zlut_path, str(path))
            yield from bps.mv(tracker.height_offsets, heights_table(lut.bead_ids, heights))
            return uid

        # magnets moved for the sweep go back to the configured safe height after it
        safe = None if magnet_z_mm is None else (
            yield from check_safe_height(microscope, None, plan="zlut_sweep")
        )
        uid = yield from with_safe_finish(
            sweep(), microscope,
            safe_magnet_height_mm=safe, lift_magnets=safe is not None,
            restore_focus_nm=focus0,
        )
        return uid

    # the sweep owns the focus: the focus lock holds still meanwhile and comes back on
    # afterwards with a new target (the new Z-LUT gives z its new zero)
    return (yield from focus_lock_suspended(body(), microscope, retarget=True))


def before_close_run(
    plan: Generator[Msg, Any, Any], insert: Callable[[], Generator[Msg, Any, Any]]
) -> Generator[Msg, Any, Any]:
    """Run ``plan``, inserting the messages of ``insert()`` before its ``close_run`` (in
    the manner of :func:`bluesky.preprocessors.monitor_during_wrapper`), so a result
    computed from the whole scan goes into the scan's run. Returns what ``plan`` returns."""

    def mutate(msg: Msg):
        if msg.command != "close_run":
            return None, None

        def head() -> Generator[Msg, Any, Any]:
            yield from insert()
            return (yield msg)

        return head(), None

    return (yield from bpp.plan_mutator(plan, mutate))


def load_zlut(
    microscope: Microscope,
    run: Any,
    *,
    allow_mismatch: bool = False,
    max_shift_px: float = MAX_ROI_SHIFT_PX,
) -> Generator[Msg, Any, ZLUT]:
    """Load the Z-LUT of a past ``zlut_sweep`` run (a Tiled run client) into the tracker.

    The Z-LUT comes from the cache ``zlut-<uid>.npz`` in the tracker's data folder, else
    from the run (:func:`magscope_plans._run_results.zlut_from_run`), cached there first;
    returns the ZLUT. The tracker applies a Z-LUT by bead id, so it must be the Z-LUT of
    the beads tracked now: a current bead with no table in it, or whose ROI is more than
    ``max_shift_px`` (px) from where the sweep saw a bead with its id (another flow cell,
    a rebuilt ROI table) is refused, unless ``allow_mismatch``. Prints which bead got
    which table.
    """
    plan = "load_zlut"
    args = PlanArgs(plan)
    allow_mismatch = args.flag("allow_mismatch", allow_mismatch)
    max_shift_px = args.non_negative("max_shift_px", max_shift_px, units="px")
    check_microscope(microscope, plan, tracker=True, ready=False)
    start = _start_document(run, plan)
    if start.get("plan_name") != "zlut_sweep":
        raise PlanArgumentError(
            plan, "run", start.get("uid"), f"is a {start.get('plan_name')!r} run",
            "a zlut_sweep run: only it holds a Z-LUT",
        )
    path = zlut_cache_path(microscope.tracker.data_dir, str(start["uid"]))
    if path.is_file():
        lut = ZLUT.load(path)
        ids, heights = load_heights(path, lut)
    else:
        lut = zlut_from_run(run)
        ids, heights = zlut_heights_from_run(run)
        lut.save(path)
        save_heights(path, ids, heights, start.get("reference_bead_ids") or [])
    rois = yield from bps.rd(microscope.tracker.rois)
    match = match_beads(
        f"the Z-LUT of run {str(start.get('uid'))[:8]}", lut.bead_ids, rois,
        start.get("bead_rois"), max_shift_px=max_shift_px,
    )
    if not match.ok and not allow_mismatch:
        raise PreflightError(
            f"{plan}: {match.what} does not fit the beads tracked now: {match.problems()}; "
            "run zlut_sweep for these beads, or pass allow_mismatch=True to apply it by "
            "bead id anyway"
        )
    yield from bps.mv(microscope.tracker.zlut_path, str(path))
    yield from bps.mv(microscope.tracker.height_offsets, heights_table(ids, heights))
    print(match.summary())
    return lut


def _start_document(run: Any, plan: str) -> dict[str, Any]:
    """The start document of a Tiled run client (refuses anything else)."""
    start = getattr(getattr(run, "metadata", None), "get", lambda _key: None)("start")
    if not isinstance(start, Mapping):
        raise PlanArgumentError(
            plan, "run", run, f"is a {type(run).__name__}",
            "a run from Tiled, e.g. tiled[uid] or tiled.values().last()",
        )
    return dict(start)


def heights_path(lut_path: Path) -> Path:
    """The file beside a Z-LUT holding its beads' heights above the reference beads."""
    return lut_path.with_name(lut_path.stem + ".heights.json")


def save_heights(lut_path: Path, bead_ids, heights_nm, reference_ids) -> Path:
    """Write the heights (nm, NaN = not anchored) of a Z-LUT's beads beside it."""
    path = heights_path(Path(lut_path))
    doc = {
        "bead_id": [int(b) for b in bead_ids],
        "height_nm": [None if not np.isfinite(h) else float(h) for h in heights_nm],
        "reference_bead_ids": [int(b) for b in reference_ids],
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


def load_heights(lut_path: Path, lut: ZLUT) -> tuple[np.ndarray, np.ndarray]:
    """Bead ids and heights (nm) saved beside a Z-LUT; all NaN when there is no file."""
    path = heights_path(Path(lut_path))
    if not path.exists():
        return lut.bead_ids, np.full(lut.n_beads, np.nan)
    doc = json.loads(path.read_text())
    heights = np.array([np.nan if h is None else h for h in doc["height_nm"]], dtype=float)
    return np.asarray(doc["bead_id"], dtype=np.int64), heights


def heights_table(bead_ids, heights_nm) -> BeadHeights:
    """The tracker's ``height_offsets`` table: the beads with a finite height."""
    ids = np.asarray(bead_ids, dtype=np.int64)
    heights = np.asarray(heights_nm, dtype=float)
    ok = np.isfinite(heights)
    return BeadHeights(bead_id=ids[ok].astype(np.int32), offset_nm=heights[ok])
