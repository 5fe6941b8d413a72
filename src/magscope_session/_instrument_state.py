"""The instrument's state, kept in one YAML file per instance so a session starts where
the last one stopped.

The file (``<data dir>/state/instrument-<instance>.yaml``, owner-only) holds what an
operator sets up once and expects to find again: the ROI table with bead ids and the
reference beads, the ROI size and tracking options, the camera settings, the lock gains
and targets, and the Z-LUT and force calibration in use, by the uid of the Tiled run that
made them. It is versioned (``version: 1``); a file this code cannot read (corrupt, or
written by a newer version) is refused with the reason and left as it was.

- :func:`read_instrument_state` reads the state off a microscope (async; the signals).
- :func:`restore_instrument_state` is a plan that sets it back through the same signals
  and plan stubs plans use; what it cannot restore (a Z-LUT run that is nowhere, a value
  the device refuses) it names and skips.
- :class:`InstrumentStateKeeper` saves the file whenever the state changes (it compares a
  fresh reading every ``interval_s`` s) and once more when the session closes.
- :func:`keep_instrument_state` does both at session start (the IPython profile and the
  queue's environment call it).

The locks' ``enabled`` is saved but never restored: a lock that starts moving the focus on
its own when a session opens would surprise the operator; the session says it was on.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import math
import os
import threading
import warnings
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import yaml
from bluesky.utils import Msg

__all__ = [
    "STATE_VERSION",
    "InstrumentStateError",
    "InstrumentStateKeeper",
    "copy_state_file",
    "describe_state",
    "keep_instrument_state",
    "parse_instrument_state",
    "read_instrument_state",
    "read_state_file",
    "restore_instrument_state",
    "state_path",
    "write_state_file",
]

STATE_VERSION = 2
"""The state file's format version this code writes and reads (and every older one).
Version 2 added the ``video`` section."""

#: section -> (the microscope's child, its signals saved and restored, in restore order)
SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "camera": ("camera", ("exposure_s", "frame_rate_hz", "gain")),
    "tracking": ("tracker", ("roi_size_px", "window_frames", "bead_radius_nm")),
    "focus_lock": ("focus_lock", ("rate_hz", "kp", "ki", "max_step_nm", "target_nm")),
    "xy_lock": ("xy_lock", ("rate_hz", "threshold_px")),
    # pre_trigger_s before mode: the trigger window keeps that many seconds from the start
    "video": ("video", ("every_n", "pre_trigger_s", "min_free_mb", "codec", "mode")),
}
_INTEGERS = {
    "roi_size_px", "window_frames", "roi_x", "roi_y", "roi_width", "roi_height", "every_n",
}
#: settings that are words: name -> the words allowed
_WORDS = {
    "mode": ("tracks", "roi_crops", "frames_every_n", "trigger_window"),
    "codec": ("bitshuffle-lz4", "zstd", "gzip", "none"),
}
_NULLABLE = {"target_nm"}  # NaN (no target yet) is saved as null
_CAMERA_ROI = ("roi_x", "roi_y", "roi_width", "roi_height")
_LOCKS = ("focus_lock", "xy_lock")


class InstrumentStateError(ValueError):
    """A state file that cannot be used: unreadable, malformed, or from a newer version."""


def state_path(data_dir: str | os.PathLike[str], instance: str) -> Path:
    """The state file of ``instance``: ``<data_dir>/state/instrument-<instance>.yaml``."""
    return Path(data_dir) / "state" / f"instrument-{instance}.yaml"


# -- reading the state off the microscope -------------------------------------------------


async def read_instrument_state(microscope: Any) -> dict[str, Any]:
    """The microscope's state now, as the dict the file holds (without ``saved``)."""
    state: dict[str, Any] = {"version": STATE_VERSION}
    for section, (child, names) in SETTINGS.items():
        device = getattr(microscope, child, None)
        if device is None:
            continue
        values = {}
        for name in names:
            values[name] = _plain(name, await getattr(device, name).get_value())
        if section == "camera":
            for name in _CAMERA_ROI:
                values[name] = _plain(name, await getattr(device, name).get_value())
        if section in _LOCKS:
            values["was_enabled"] = bool(await device.enabled.get_value())
        state[section] = values
    tracker = microscope.tracker
    rois = await tracker.rois.get_value()
    order = np.argsort(np.asarray(rois.bead_id), kind="stable")
    state["beads"] = {
        "rois": [
            {"bead_id": int(rois.bead_id[i]), "x0_px": int(rois.x0_px[i]),
             "y0_px": int(rois.y0_px[i])}
            for i in order
        ],
        "reference": sorted(int(b) for b in await tracker.reference_beads.get_value()),
    }
    zlut_uid = await tracker.zlut_uid.get_value()
    calibration = microscope.force.calibration
    state["zlut_run"] = zlut_uid or None
    state["force_calibration_run"] = (
        calibration.source if calibration is not None and calibration.source else None
    )
    return state


def _plain(name: str, value: Any) -> Any:
    """A signal's value as YAML writes it (int, float, a word, or null for a NaN target)."""
    if name in _WORDS:
        return str(getattr(value, "value", value))
    if name in _INTEGERS:
        return int(value)
    value = float(value)
    if math.isnan(value) and name in _NULLABLE:
        return None
    return value


# -- the file -----------------------------------------------------------------------------


def write_state_file(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` (owner-only; a temporary file renamed over it, so a
    crash mid-write leaves the previous file). Adds ``saved`` (UTC, ISO 8601)."""
    path = Path(path)
    body = {"version": STATE_VERSION,
            "saved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    body.update({k: v for k, v in state.items() if k not in ("version", "saved")})
    text = (
        "# MagScope-Bluesky instrument state: loaded when a session opens, saved when it "
        "changes.\n# Units: px, s, Hz, nm; zlut_run and force_calibration_run are Tiled "
        "run uids.\n" + yaml.safe_dump(body, sort_keys=False)
    )
    _write_owner_only(path, text)
    return path


def _write_owner_only(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, owner-only, through a temporary file renamed over it
    (a crash mid-write leaves the previous file); the folder is made owner-only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_state_file(
    source: str | os.PathLike[str], target: str | os.PathLike[str], *,
    overwrite: bool = False, keep_previous: bool = False,
) -> Path | None:
    """Copy a state file after checking it (:func:`read_state_file`), owner-only and
    atomically. An existing ``target`` is refused unless ``overwrite``; with
    ``keep_previous`` it is kept as ``<target>.previous`` (returned)."""
    source, target = Path(source), Path(target)
    if not source.exists():
        raise FileNotFoundError(f"no state file at {source}")
    text = source.read_text()
    parse_instrument_state(text, source=str(source))
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: pass --overwrite to replace it")
    previous = None
    if keep_previous and target.exists():
        previous = target.with_name(target.name + ".previous")
        _write_owner_only(previous, target.read_text())
    _write_owner_only(target, text)
    return previous


def read_state_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state in ``path``, checked (:func:`parse_instrument_state`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise InstrumentStateError(f"cannot read the state file {path}: {err}") from None
    return parse_instrument_state(text, source=str(path))


def parse_instrument_state(text: str, *, source: str = "<text>") -> dict[str, Any]:
    """Parse and check a state file's text; :class:`InstrumentStateError` names the key,
    the value and what is allowed."""
    try:
        state = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InstrumentStateError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(state, dict):
        raise InstrumentStateError(
            f"{source}: expected a mapping of sections, got {type(state).__name__}"
        )
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InstrumentStateError(
            f"{source}: 'version' is {version!r}; expected a whole number from 1 to "
            f"{STATE_VERSION}"
        )
    if version > STATE_VERSION:
        raise InstrumentStateError(
            f"{source} was written by a newer MagScope-Bluesky (state version {version}; "
            f"this one reads up to {STATE_VERSION}): upgrade, or start without it"
        )
    known = {"version", "saved", "beads", "zlut_run", "force_calibration_run", *SETTINGS}
    if unknown := sorted(set(state) - known):
        raise InstrumentStateError(
            f"{source}: unknown section(s) {unknown}; allowed: {sorted(known)}"
        )
    for section in SETTINGS:
        if section in state:
            _check_section(source, section, state[section])
    if "beads" in state:
        _check_beads(source, state["beads"])
    for key in ("zlut_run", "force_calibration_run"):
        value = state.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InstrumentStateError(
                f"{source}: {key} is {value!r}; expected a Tiled run uid (text) or null"
            )
    return state


def _check_section(source: str, section: str, values: Any) -> None:
    if not isinstance(values, dict):
        raise InstrumentStateError(
            f"{source}: {section} is {values!r}; expected a mapping of settings"
        )
    names = set(SETTINGS[section][1])
    if section == "camera":
        names |= set(_CAMERA_ROI)
    if section in _LOCKS:
        names.add("was_enabled")
    if unknown := sorted(set(values) - names):
        raise InstrumentStateError(
            f"{source}: unknown setting(s) {section}.{unknown}; allowed: {sorted(names)}"
        )
    for name, value in values.items():
        where = f"{source}: {section}.{name}"
        if name == "was_enabled":
            if not isinstance(value, bool):
                raise InstrumentStateError(f"{where} is {value!r}; expected true or false")
        elif value is None and name in _NULLABLE:
            continue
        elif name in _WORDS:
            if value not in _WORDS[name]:
                raise InstrumentStateError(
                    f"{where} is {value!r}; expected one of {', '.join(_WORDS[name])}"
                )
        elif name in _INTEGERS:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InstrumentStateError(f"{where} is {value!r}; expected a whole number >= 0")
        elif (not isinstance(value, (int, float)) or isinstance(value, bool)
              or not math.isfinite(value)):
            raise InstrumentStateError(f"{where} is {value!r}; expected a finite number")


def _check_beads(source: str, beads: Any) -> None:
    if not isinstance(beads, dict) or set(beads) - {"rois", "reference"}:
        raise InstrumentStateError(
            f"{source}: beads is {beads!r}; expected a mapping with 'rois' and 'reference'"
        )
    rois = beads.get("rois") or []
    if not isinstance(rois, list):
        raise InstrumentStateError(f"{source}: beads.rois is {rois!r}; expected a list")
    seen: set[int] = set()
    for i, row in enumerate(rois):
        if not isinstance(row, dict) or set(row) != {"bead_id", "x0_px", "y0_px"} or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row.values()
        ):
            raise InstrumentStateError(
                f"{source}: beads.rois[{i}] is {row!r}; expected bead_id, x0_px, y0_px as "
                "whole numbers >= 0"
            )
        if row["bead_id"] in seen:
            raise InstrumentStateError(
                f"{source}: beads.rois[{i}]: bead_id {row['bead_id']} appears twice"
            )
        seen.add(row["bead_id"])
    reference = beads.get("reference") or []
    if not isinstance(reference, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in reference
    ):
        raise InstrumentStateError(
            f"{source}: beads.reference is {reference!r}; expected a list of bead ids"
        )
    if missing := sorted(set(reference) - seen):
        raise InstrumentStateError(
            f"{source}: beads.reference names bead(s) {missing} that have no ROI in beads.rois"
        )


# -- restoring ----------------------------------------------------------------------------


def restore_instrument_state(
    microscope: Any, state: Mapping[str, Any], *, runs: Any = None
) -> Generator[Msg, Any, list[str]]:
    """Set ``state`` (a checked state dict) back on ``microscope``, through its signals and
    the ``load_zlut``/``load_force_calibration`` plans; ``runs`` is the Tiled catalog the
    Z-LUT and calibration runs are looked up in when their local copies are gone (None:
    local copies only). Opens no run. Returns the notes: what was not restored and why."""
    from magscope_devices._bead_tracker import BeadRois
    from magscope_plans import load_force_calibration, load_zlut
    from magscope_plans._force_calibration import calibration_cache_path
    from magscope_plans._zlut import heights_table, load_heights, zlut_cache_path
    from magscope_tracking import ZLUT

    notes: list[str] = []

    def put(signal: Any, value: Any, what: str) -> Generator[Msg, Any, None]:
        try:
            yield from bps.mv(signal, value)
        except Exception as err:  # a value the device refuses: say so, restore the rest
            notes.append(f"{what} = {value!r} not restored: {err}")

    camera = state.get("camera") or {}
    if all(name in camera for name in _CAMERA_ROI):
        cam = microscope.camera
        now = []
        for name in _CAMERA_ROI:
            now.append((yield from bps.rd(getattr(cam, name))))
        x, y, w, h = (int(camera[name]) for name in _CAMERA_ROI)
        if now != [x, y, w, h]:  # through the corner at 0, 0: each step stays on the sensor
            for signal, value in ((cam.roi_x, 0), (cam.roi_y, 0), (cam.roi_width, w),
                                  (cam.roi_height, h), (cam.roi_x, x), (cam.roi_y, y)):
                yield from put(signal, value, f"camera.{signal.name}")
    if "frame_rate_hz" in camera and "exposure_s" in camera:
        # a lower frame rate first makes room for a longer exposure, and the other way round
        rate = yield from bps.rd(microscope.camera.frame_rate_hz)
        if camera["frame_rate_hz"] < rate:
            yield from put(microscope.camera.frame_rate_hz, camera["frame_rate_hz"],
                           "camera.frame_rate_hz")
    for section, (child, names) in SETTINGS.items():
        device = getattr(microscope, child, None)
        values = state.get(section) or {}
        if device is None:
            if values:
                notes.append(f"{section}: this microscope has no {child}; its settings skipped")
            continue
        for name in names:
            if name in values and values[name] is not None:
                current = yield from bps.rd(getattr(device, name))
                if current != values[name]:
                    yield from put(getattr(device, name), values[name], f"{section}.{name}")
        if values.get("was_enabled"):
            notes.append(f"{section} was on when the state was saved; it stays off until "
                         f"you turn it on (RE(lock_focus()) / {child}.enabled)")
    beads = state.get("beads") or {}
    tracker = microscope.tracker
    if "rois" in beads:
        rows = beads["rois"]
        table = BeadRois(
            bead_id=np.array([r["bead_id"] for r in rows], np.int32),
            x0_px=np.array([r["x0_px"] for r in rows], np.int32),
            y0_px=np.array([r["y0_px"] for r in rows], np.int32),
        )
        yield from put(tracker.rois, table, "beads.rois")
    if "reference" in beads:
        yield from put(tracker.reference_beads, np.array(beads["reference"], np.int32),
                       "beads.reference")

    data_dir = tracker.data_dir
    if uid := state.get("zlut_run"):
        cached = zlut_cache_path(data_dir, uid)

        def zlut_from_cache() -> Generator[Msg, Any, None]:
            ids, heights = load_heights(cached, ZLUT.load(cached))
            yield from bps.mv(tracker.zlut_path, str(cached))
            yield from bps.mv(tracker.height_offsets, heights_table(ids, heights))

        notes += yield from _restore_run_result(
            "Z-LUT", uid, cached, zlut_from_cache, lambda run: load_zlut(microscope, run),
            runs, "z is not tracked until you load or sweep one",
        )
    if uid := state.get("force_calibration_run"):
        cached = calibration_cache_path(data_dir, uid)
        notes += yield from _restore_run_result(
            "force calibration", uid, cached,
            lambda: bps.mv(microscope.force.calibration_file, str(cached)),
            lambda run: load_force_calibration(microscope, run),
            runs, "force is uncalibrated until you load or run one",
        )
    return notes


def _restore_run_result(
    what: str, uid: str, cached: Path, from_cache: Callable[[], Generator[Msg, Any, Any]],
    from_run: Callable[[Any], Generator[Msg, Any, Any]], runs: Any, without: str,
) -> Generator[Msg, Any, list[str]]:
    """Load the ``what`` of run ``uid`` from its local copy ``cached``, else from the run
    in ``runs`` (Tiled); returns the note when neither is there or the load failed."""
    try:
        if cached.is_file():
            yield from from_cache()
        elif (run := _find_run(runs, uid)) is not None:
            yield from from_run(run)
        else:
            return [f"the {what} of run {uid} was not found ({cached} is gone and "
                    f"{_where(runs)} has no such run): {without}"]
    except Exception as err:
        return [f"the {what} of run {uid} was not loaded: {err}"]
    return []


def _find_run(runs: Any, uid: str) -> Any:
    if runs is None:
        return None
    try:
        return runs[uid]
    except KeyError:
        return None


def _where(runs: Any) -> str:
    return "Tiled (not reachable)" if runs is None else "Tiled"


def describe_state(state: Mapping[str, Any]) -> str:
    """One line: what a state holds (beads, Z-LUT, calibration)."""
    beads = state.get("beads") or {}
    n, ref = len(beads.get("rois") or []), len(beads.get("reference") or [])
    zlut = state.get("zlut_run")
    cal = state.get("force_calibration_run")
    return (f"{n} beads ({ref} reference), "
            f"{'Z-LUT of run ' + zlut[:8] if zlut else 'no Z-LUT'}, "
            f"{'force calibration of run ' + cal[:8] if cal else 'no force calibration'}")


# -- keeping it ---------------------------------------------------------------------------


class InstrumentStateKeeper:
    """Saves ``read()`` to ``path`` whenever it differs from what was saved last, checking
    every ``interval_s`` s in a daemon thread, and once more on :meth:`stop`.

    :param read: returns the state now (a dict; called from the keeper's thread).
    """

    def __init__(
        self, read: Callable[[], dict[str, Any]], path: str | os.PathLike[str],
        *, interval_s: float = 2.0,
    ) -> None:
        if not (math.isfinite(interval_s) and 0.05 <= interval_s <= 3600):
            raise ValueError(f"interval_s must be 0.05-3600 s, got {interval_s!r}")
        self.read = read
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.saves = 0
        self.last_error: str | None = None
        self._saved: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, *, saved: Mapping[str, Any] | None = None) -> InstrumentStateKeeper:
        """Start watching; ``saved`` is what the file holds now (not written again)."""
        self._saved = None if saved is None else _comparable(saved)
        self._thread = threading.Thread(target=self._run, name="instrument-state", daemon=True)
        self._thread.start()
        return self

    def save_if_changed(self) -> bool:
        """Save now if the state changed; True if it wrote the file."""
        with self._lock:
            try:
                state = self.read()
            except Exception as err:  # the microscope closed, or a signal failed
                self.last_error = f"{type(err).__name__}: {err}"
                return False
            now = _comparable(state)
            if now == self._saved:
                return False
            try:
                write_state_file(self.path, state)
            except OSError as err:
                if self.last_error != str(err):
                    warnings.warn(f"cannot save the instrument state to {self.path}: {err}",
                                  stacklevel=2)
                self.last_error = str(err)
                return False
            self._saved, self.saves, self.last_error = now, self.saves + 1, None
            return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.save_if_changed()

    def stop(self) -> None:
        """Stop watching, after a last save. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.save_if_changed()


def _comparable(state: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in state.items() if k not in ("saved", "version")})


def keep_instrument_state(
    RE: Any,
    microscope: Any,
    *,
    data_dir: str | os.PathLike[str],
    instance: str,
    runs: Any = None,
    interval_s: float | None = None,
) -> InstrumentStateKeeper | None:
    """At session start: restore the instance's state file (if any) on ``microscope``
    with ``RE``, print what was restored and what not, then keep the file up to date
    (every ``interval_s`` s, ``$MAGSCOPE_STATE_INTERVAL_S``, else 2; and at exit).

    A file that cannot be used is refused with the reason and left as it was; the session
    then runs without saving its state (returns None) so the file is not overwritten.
    """
    from ._setup import close_at_exit

    path = state_path(data_dir, instance)
    saved: dict[str, Any] | None = None
    if path.exists():
        try:
            saved = read_state_file(path)
        except InstrumentStateError as err:
            warnings.warn(
                f"{err}. The file is left as it was and this session does not save its "
                f"state: fix or move it, or replace it with `magscope state import FILE "
                f"--instance {instance}` while no session runs.", stacklevel=2,
            )
            return None
        notes = RE(restore_instrument_state(microscope, saved, runs=runs))
        notes = notes.plan_result if hasattr(notes, "plan_result") else notes
        print(f"Instrument state restored from {path} (saved {saved.get('saved', '?')}): "
              f"{describe_state(saved)}.")
        for note in notes or []:
            print(f"  not restored: {note}")
    loop = RE.loop  # where the devices' signals live

    def read() -> dict[str, Any]:
        if loop.is_closed() or not loop.is_running():
            raise RuntimeError("the RunEngine's event loop is not running")
        return asyncio.run_coroutine_threadsafe(
            read_instrument_state(microscope), loop
        ).result(timeout=5)

    if interval_s is None:
        interval_s = float(os.environ.get("MAGSCOPE_STATE_INTERVAL_S", 2.0))
    keeper = InstrumentStateKeeper(read, path, interval_s=interval_s)
    close_at_exit(keeper.stop, priority=30)  # before the microscope closes (20)
    # the restore may have changed nothing or something: the first check decides
    return keeper.start(saved=None)
