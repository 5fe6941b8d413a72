"""Which bead each column of a stream's per-bead arrays is, and the geometry to re-analyse
them: the configuration every device that publishes per-bead arrays carries.

A device publishing per-bead arrays (the bead tracker, the records of the Z-LUT sweep and
the force calibration) has these configuration signals, so they are in the configuration
of every stream it is read in (``run[stream].metadata["configuration"][<device>]``):

- ``<device>-bead_ids`` (beads,): the bead id of each column of the per-bead arrays;
- ``<device>-roi_x0_px``, ``<device>-roi_y0_px`` (beads,): each bead's ROI top-left
  corner (sensor px) when the stream began;
- ``<device>-roi_size_px``: the side of the square ROIs (px);
- ``<device>-nm_per_px``: the pixel size in the sample (nm/px);
- ``<device>-zlut_uid``: uid of the ``zlut_sweep`` run whose Z-LUT gave z ("" when none).

:class:`BeadLayout` holds one set of them and reads it back from a stream's configuration.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from ophyd_async.core import (
    Array1D,
    SignalRW,
    StandardReadable,
    StandardReadableFormat,
    soft_signal_rw,
)

__all__ = ["LAYOUT_FIELDS", "BeadLayout", "BeadLayoutRecord"]

#: Suffixes of the configuration keys of a device that publishes per-bead arrays.
LAYOUT_FIELDS = ("bead_ids", "roi_x0_px", "roi_y0_px", "roi_size_px", "nm_per_px", "zlut_uid")


@dataclasses.dataclass(frozen=True)
class BeadLayout:
    """The beads of a stream's per-bead arrays (columns in this order) and their geometry.

    ``bead_ids``, ``roi_x0_px``, ``roi_y0_px`` (beads,) int64 (px); ``roi_size_px`` (px);
    ``nm_per_px`` (nm/px); ``zlut_uid`` (run uid of the Z-LUT; "" when none).
    """

    bead_ids: np.ndarray
    roi_x0_px: np.ndarray
    roi_y0_px: np.ndarray
    roi_size_px: int
    nm_per_px: float
    zlut_uid: str = ""

    def __post_init__(self) -> None:
        for name in ("bead_ids", "roi_x0_px", "roi_y0_px"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), np.int64).reshape(-1))
        if not self.bead_ids.size == self.roi_x0_px.size == self.roi_y0_px.size:
            raise ValueError(
                f"bead_ids, roi_x0_px and roi_y0_px differ in length: {self.bead_ids.size}, "
                f"{self.roi_x0_px.size}, {self.roi_y0_px.size}"
            )
        object.__setattr__(self, "roi_size_px", int(self.roi_size_px))
        object.__setattr__(self, "nm_per_px", float(self.nm_per_px))
        object.__setattr__(self, "zlut_uid", str(self.zlut_uid or ""))

    def select(self, bead_ids: Any) -> BeadLayout:
        """The layout of ``bead_ids`` only, in that order (KeyError naming a missing bead)."""
        column = {int(b): i for i, b in enumerate(self.bead_ids)}
        try:
            cols = np.array([column[int(b)] for b in np.atleast_1d(bead_ids)], np.int64)
        except KeyError as exc:
            raise KeyError(
                f"bead {exc.args[0]} is not in the layout (beads {self.bead_ids.tolist()})"
            ) from None
        return dataclasses.replace(
            self, bead_ids=self.bead_ids[cols], roi_x0_px=self.roi_x0_px[cols],
            roi_y0_px=self.roi_y0_px[cols],
        )

    def rois_metadata(self) -> dict[str, list[int]]:
        """The ROIs as plain lists (``bead_id``, ``x0_px``, ``y0_px``), for bead matching."""
        return {
            "bead_id": self.bead_ids.tolist(),
            "x0_px": self.roi_x0_px.tolist(),
            "y0_px": self.roi_y0_px.tolist(),
        }

    @classmethod
    def from_configuration(cls, configuration: Mapping[str, Any], device: str) -> BeadLayout:
        """The layout of ``device`` in a stream's configuration (the descriptor's
        ``configuration`` mapping: device name -> {"data": {key: value}, ...}).

        Raises KeyError naming what is missing."""
        try:
            data = configuration[device]["data"]
        except (KeyError, TypeError):
            raise KeyError(f"the stream's configuration has no device {device!r}") from None
        missing = [f for f in LAYOUT_FIELDS if f"{device}-{f}" not in data]
        if missing:
            raise KeyError(f"the configuration of {device!r} has no {missing}")
        return cls(**{f: data[f"{device}-{f}"] for f in LAYOUT_FIELDS})

    @staticmethod
    def devices_in(configuration: Mapping[str, Any]) -> list[str]:
        """Names of the devices in a stream's configuration that carry a bead layout."""
        found = []
        for device, entry in (configuration or {}).items():
            data = (entry or {}).get("data") or {}
            if all(f"{device}-{f}" in data for f in LAYOUT_FIELDS):
                found.append(device)
        return sorted(found)


class BeadLayoutRecord(StandardReadable):
    """Base of readables that publish per-bead arrays set by a plan: the layout signals
    (see the module docstring) are configuration signals, set with :meth:`layout_moves`
    before the record is first read in a stream."""

    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables(StandardReadableFormat.CONFIG_SIGNAL):
            self.bead_ids = soft_signal_rw(Array1D[np.int64], np.zeros(0, np.int64))
            self.roi_x0_px = soft_signal_rw(Array1D[np.int64], np.zeros(0, np.int64), units="px")
            self.roi_y0_px = soft_signal_rw(Array1D[np.int64], np.zeros(0, np.int64), units="px")
            self.roi_size_px = soft_signal_rw(int, 0, units="px")
            self.nm_per_px = soft_signal_rw(float, 0.0, units="nm/px")
            self.zlut_uid = soft_signal_rw(str, "")
        super().__init__(name=name)

    def layout_moves(self, layout: BeadLayout) -> list[Any]:
        """Arguments of ``bps.mv`` that set the layout signals to ``layout``."""
        moves: list[Any] = []
        for field in LAYOUT_FIELDS:
            signal: SignalRW = getattr(self, field)
            moves += [signal, getattr(layout, field)]
        return moves
