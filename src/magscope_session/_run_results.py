"""A plan's results from its run in Tiled (behind :func:`magscope_session.runs.zlut_of`
and :func:`magscope_session.runs.force_calibration_of`): read from the run's streams and
their configuration alone, never from side files (which are only caches)."""

from __future__ import annotations

from typing import Any

from magscope_devices._force_curve import ForceCalibration
from magscope_plans._run_results import (
    force_calibration_from_run,
    zlut_from_images,
    zlut_from_run,
)
from magscope_tracking import ZLUT

from ._run_tracks import _start

__all__ = ["force_calibration_of", "zlut_of"]


def zlut_of(run: Any, *, from_images: bool = False) -> ZLUT:
    """The Z-LUT a ``zlut_sweep`` run built, from the run alone.

    Read from its ``zlut`` stream (``zlut-z_nm`` nm, ``zlut-profiles``, ``zlut-created``,
    and the stream's configuration: bead ids, ROI size px, nm/px, radial bin spacing px);
    with ``from_images``, built again from the ROI images every step recorded (stream
    ``primary``, :func:`magscope_plans._run_results.zlut_from_images`): the same Z-LUT.
    ``source`` is the run uid. (The beads' heights above the reference beads are the
    stream's ``zlut-height_nm``; :func:`magscope_plans._zlut.load_zlut` loads both into a
    live tracker.)

    Raises ValueError if the run holds no Z-LUT.
    """
    _start(run)
    return zlut_from_images(run) if from_images else zlut_from_run(run)


def force_calibration_of(run: Any) -> ForceCalibration:
    """The magnet force calibration a ``force_calibration`` run made, from the run alone:
    its ``force_fit`` stream (``f0_pn`` pN, ``a``, ``l1_mm``, ``l2_mm``, ``min_height_mm``,
    ``max_height_mm`` mm, ``bead_scale``, ``created`` s) and the bead ids in the stream's
    configuration. ``source`` is the run uid.

    Raises ValueError if the run holds no force calibration.
    """
    _start(run)
    return force_calibration_from_run(run)
