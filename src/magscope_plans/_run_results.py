"""A plan's results rebuilt from its run alone: the Z-LUT of a ``zlut_sweep`` run and the
force calibration of a ``force_calibration`` run, from the run's streams and their
configuration (nothing from files, nothing guessed).

Each function takes a run client (``tiled_client[uid]``, an item of
``magscope_session.runs.find_runs``): a mapping of stream name -> stream node, where a
stream node maps a field name to an array client with ``read()`` (event axis first) and
has ``metadata["configuration"]`` (the descriptor's configuration). The run's start
document is ``run.metadata["start"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from magscope_devices._bead_layout import BeadLayout
from magscope_devices._force_curve import ForceCalibration
from magscope_tracking import ZLUT, build_zlut

__all__ = [
    "NoResultError",
    "force_calibration_from_run",
    "stream_layout",
    "zlut_from_images",
    "zlut_from_run",
    "zlut_heights_from_run",
]


class NoResultError(ValueError):
    """The run does not hold the result asked for."""


def _start(run: Any) -> dict[str, Any]:
    start = getattr(getattr(run, "metadata", None), "get", lambda _key: None)("start")
    if not isinstance(start, Mapping):
        raise TypeError(
            f"expected a run client (e.g. client[uid] or an item of find_runs(...)), got "
            f"{type(run).__name__}"
        )
    return dict(start)


def _describe(start: Mapping[str, Any]) -> str:
    return f"run {start.get('uid')} ({start.get('plan_name')!r})"


def _stream(run: Any, name: str, what: str) -> Any:
    start = _start(run)
    if name not in list(run):
        raise NoResultError(f"{_describe(start)} holds no {what} (no {name!r} stream)")
    return run[name]


def _configuration(node: Any) -> dict[str, Any]:
    return dict(node.metadata.get("configuration") or {})


def _read(node: Any, key: str) -> np.ndarray:
    """Every event's value of field ``key`` (event axis first). Array children are read
    through ``node.base`` when the node has one (one request instead of two)."""
    base = getattr(node, "base", None)
    if base is not None:
        try:
            return np.asarray(base[key].read())
        except KeyError:
            pass
    return np.asarray(node[key].read())


def _last(node: Any, key: str) -> np.ndarray:
    return _read(node, key)[-1]


def stream_layout(node: Any, device: str) -> BeadLayout:
    """The bead layout of ``device`` in a stream's configuration
    (:class:`~magscope_devices._bead_layout.BeadLayout`)."""
    return BeadLayout.from_configuration(_configuration(node), device)


def zlut_from_run(run: Any) -> ZLUT:
    """The Z-LUT a ``zlut_sweep`` run built, from its ``zlut`` stream: ``zlut-z_nm``,
    ``zlut-profiles``, ``zlut-created`` and the stream's configuration (bead ids, ROI
    size, nm/px, radial bin spacing, focal shift). ``source`` is the run uid."""
    node = _stream(run, "zlut", "Z-LUT")
    layout = stream_layout(node, "zlut")
    side = layout.roi_size_px
    return ZLUT(
        z_nm=_last(node, "zlut-z_nm"),
        profiles=_last(node, "zlut-profiles"),
        roi_size=(side, side),
        bin_px=float(_configuration(node)["zlut"]["data"]["zlut-bin_px"]),
        nm_per_px=layout.nm_per_px,
        bead_ids=layout.bead_ids,
        created=float(_last(node, "zlut-created")),
        source=_start(run).get("uid"),
        # runs from before the focal shift was kept had none (1)
        focal_shift=float(_configuration(node)["zlut"]["data"].get("zlut-focal_shift", 1.0)),
    )


def zlut_heights_from_run(run: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bead ids and heights above the reference beads (nm; NaN = not anchored) of a
    ``zlut_sweep`` run's Z-LUT (stream ``zlut``, field ``zlut-height_nm``)."""
    node = _stream(run, "zlut", "Z-LUT")
    return stream_layout(node, "zlut").bead_ids, np.asarray(
        _last(node, "zlut-height_nm"), float
    )


def zlut_from_images(run: Any) -> ZLUT:
    """The Z-LUT of a ``zlut_sweep`` run built again from the ROI images it recorded
    (stream ``primary``: ``zlut_images-images`` (steps, beads, frames, h, w) and
    ``zlut_images-focus_offset_nm``), with the tracking defaults, as the sweep built it.
    ``created`` is the sweep's (stream ``zlut``) when it has one."""
    start = _start(run)
    node = _stream(run, "primary", "Z-LUT sweep images")
    layout = stream_layout(node, "zlut_images")
    images = _read(node, "zlut_images-images")  # (steps, beads, frames, h, w)
    offsets = np.asarray(_read(node, "zlut_images-focus_offset_nm"), float)
    steps, beads, frames, h, w = images.shape
    stack = np.moveaxis(images, 1, 0).reshape(beads, steps * frames, h, w)
    created = None
    if "zlut" in list(run):
        created = float(_last(run["zlut"], "zlut-created"))
    return build_zlut(
        stack, np.repeat(-offsets, frames), nm_per_px=layout.nm_per_px,
        bead_ids=layout.bead_ids, source=start.get("uid"), created=created,
        focal_shift=float(start.get("focal_shift", 1.0)),
    )


def force_calibration_from_run(run: Any) -> ForceCalibration:
    """The magnet force calibration of a ``force_calibration`` run, from its ``force_fit``
    stream: ``f0_pn`` (pN), ``a``, ``l1_mm``, ``l2_mm``, ``min_height_mm``,
    ``max_height_mm`` (mm), ``bead_scale``, ``created`` (UNIX s) and the bead ids of the
    stream's configuration. ``source`` is the run uid."""
    node = _stream(run, "force_fit", "force calibration")
    layout = stream_layout(node, "force_fit")

    def value(field: str) -> np.ndarray:
        return _last(node, f"force_fit-{field}")

    return ForceCalibration(
        f0_pn=float(value("f0_pn")),
        a=float(value("a")),
        l1_mm=float(value("l1_mm")),
        l2_mm=float(value("l2_mm")),
        min_height_mm=float(value("min_height_mm")),
        max_height_mm=float(value("max_height_mm")),
        bead_ids=tuple(int(b) for b in layout.bead_ids),
        bead_scale=tuple(float(s) for s in np.atleast_1d(value("bead_scale"))),
        source=_start(run).get("uid"),
        created=float(value("created")),
        **_radii(node, value),
        **_errors(node, value),
    )


def _errors(node: Any, value: Any) -> dict[str, Any]:
    """The covariance and scale errors of a force_fit stream (none in older runs)."""
    keys = node.metadata.get("data_keys") or {}
    out: dict[str, Any] = {}
    if "force_fit-covariance" in keys:
        cov = np.asarray(value("covariance"), float).reshape(-1)
        if cov.size == 16 and np.all(np.isfinite(cov)):
            out["covariance"] = tuple(tuple(float(v) for v in row) for row in cov.reshape(4, 4))
    if "force_fit-bead_scale_err" in keys:
        out["bead_scale_err"] = tuple(
            float(e) for e in np.atleast_1d(value("bead_scale_err"))
        )
    return out


def _radii(node: Any, value: Any) -> dict[str, Any]:
    """The radii of a force_fit stream (none in runs made before they were measured)."""
    if "force_fit-bead_radius_nm" not in (node.metadata.get("data_keys") or {}):
        return {}
    ref, ref_err = float(value("reference_radius_nm")), float(value("reference_radius_nm_err"))
    return {
        "bead_radius_nm": tuple(float(r) for r in np.atleast_1d(value("bead_radius_nm"))),
        "bead_radius_nm_err": tuple(
            float(e) for e in np.atleast_1d(value("bead_radius_nm_err"))
        ),
        "reference_radius_nm": ref if np.isfinite(ref) else None,
        "reference_radius_nm_err": ref_err if np.isfinite(ref_err) else None,
    }
