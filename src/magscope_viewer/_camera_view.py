"""The camera panel: the live image with levels, ROI boxes with bead ids, tracked centres.

Coordinates are sensor pixels: the centre of sensor pixel column ``i`` sits at ``x = i``
(as in the track ring, ``x_nm = x_px * nm_per_px``), so the image is drawn from
``x0 - 0.5`` and an ROI of top-left pixel ``x0`` and side ``s`` spans
``x0 - 0.5 .. x0 + s - 0.5``. Rows grow downwards as on the sensor.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore

from magscope_tracking import RoiTable

from ._bead_editing import BeadViewBox
from ._live_source import LiveFrame
from ._overlays import BeadLabels, CentreMarks

#: ROI box colours (RGB): selected, reference and other beads.
SELECTED_COLOUR = (255, 200, 0)
REFERENCE_COLOUR = (0, 200, 255)
OTHER_COLOUR = (90, 200, 90)
CENTRE_COLOUR = (255, 60, 60)


#: The levels follow the image (and the histogram is recomputed) at most this often (Hz).
LEVELS_HZ = 2.0


def image_levels(image: np.ndarray, step: int = 4) -> tuple[float, float]:
    """Display levels of a camera image: its 0.5th and 99.5th percentiles over every
    ``step``-th row and column (about 1/16 of the pixels at 4), the upper one at least
    one grey level above the lower."""
    sample = np.asarray(image)[::step, ::step]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1.0))


def display_step(pixel_size: tuple[float, float] | None, largest: int = 8) -> int:
    """Stride (>= 1) at which the camera image is shown when a screen pixel covers
    ``pixel_size`` (x, y) sensor pixels: the whole number of sensor pixels per screen
    pixel, so zoomed out the image item gets a fraction of the frame (Qt draws scaled
    images by picking pixels anyway) and zoomed in (< 2) the full frame."""
    if pixel_size is None:
        return 1
    size = min(abs(float(pixel_size[0])), abs(float(pixel_size[1])))
    if not np.isfinite(size):
        return 1
    return int(min(max(int(size), 1), largest))


def box_outlines(x0: np.ndarray, y0: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Outline vertices of square boxes (top-left pixel ``x0``, ``y0``, side ``size`` px)
    as one polyline with NaN between boxes (for ``connect="finite"``), pixel edges at
    +-0.5."""
    n = len(x0)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    left = np.asarray(x0, float) - 0.5
    top = np.asarray(y0, float) - 0.5
    right, bottom = left + size, top + size
    nan = np.full(n, np.nan)
    xs = np.column_stack([left, right, right, left, left, nan]).ravel()
    ys = np.column_stack([top, top, bottom, bottom, top, nan]).ravel()
    return xs, ys


class CameraView(pg.GraphicsLayoutWidget):
    """Live camera image (zoom and pan with the mouse; levels and histogram beside it).
    Bead editing by mouse: ``self.plot.vb`` is a :class:`BeadViewBox` (its signals)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.plot = self.addPlot(viewBox=BeadViewBox(self))
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "x (px)")
        self.plot.setLabel("left", "y (px)")
        self.image = pg.ImageItem(axisOrder="row-major")
        self.plot.addItem(self.image)
        self.histogram = pg.HistogramLUTItem(image=self.image)
        # the histogram is recomputed at LEVELS_HZ (set_frame), not at every new image
        self.image.sigImageChanged.disconnect(self.histogram.imageChanged)
        self.histogram.sigLevelsChanged.connect(self._levels_changed)
        self.addItem(self.histogram)
        #: Whether the levels follow the image (False once the user set them).
        self.auto_levels = True
        self.levels: tuple[float, float] = (0.0, 255.0)
        self._levels_time = -np.inf
        self._setting_levels = False
        self.boxes = {
            kind: pg.PlotDataItem(pen=pg.mkPen(colour, width=1.5), connect="finite")
            for kind, colour in (
                ("other", OTHER_COLOUR), ("reference", REFERENCE_COLOUR),
                ("selected", SELECTED_COLOUR),
            )
        }
        for item in self.boxes.values():
            self.plot.addItem(item)
        self.centres = CentreMarks(pg.mkPen(CENTRE_COLOUR, width=1.5), size=9)
        self.plot.addItem(self.centres)
        #: Bead ids beside the ROI boxes, all in one item.
        self.labels = BeadLabels()
        self.plot.addItem(self.labels)
        self._rect: tuple[int, int, int, int, int] | None = None
        self.frame_index = -1
        #: Camera frame index whose tracked centres are marked (-1: none).
        self.centres_frame = -1
        self.roi_table: RoiTable | None = None

    def set_frame(self, frame: LiveFrame, now: float | None = None) -> None:
        """Show ``frame`` (at the stride :func:`display_step` of the zoom). Levels follow the image (:func:`image_levels`, at most
        :data:`LEVELS_HZ` times a second) until the user sets them in the histogram; the
        histogram is recomputed at that rate too, not at every frame. ``now``: monotonic
        s (default: the clock)."""
        full = frame.image
        rows, cols = full.shape
        step = display_step(self.plot.vb.viewPixelSize())
        image = full[::step, ::step] if step > 1 else full
        if not image.flags.c_contiguous:
            image = np.ascontiguousarray(image)
        now = time.monotonic() if now is None else now
        slow = now - self._levels_time >= 1.0 / LEVELS_HZ
        if slow and self.auto_levels:
            self.levels = image_levels(full)
        self.image.setImage(image, autoLevels=False, levels=self.levels)
        if slow:
            self._levels_time = now
            self._setting_levels = True
            try:  # the histogram (and its levels region) follows the image
                self.histogram.imageChanged(autoLevel=False)
                self.histogram.setLevels(*self.levels)
            finally:
                self._setting_levels = False
        rect = (frame.x0_px, frame.y0_px, cols, rows, step)
        if rect != self._rect:
            # a strided image still spans the sensor pixels it samples
            w, h = image.shape[1] * step, image.shape[0] * step
            self.image.setRect(QtCore.QRectF(frame.x0_px - 0.5, frame.y0_px - 0.5, w, h))
            if self._rect is None:
                self.plot.setRange(
                    xRange=(frame.x0_px - 0.5, frame.x0_px + cols - 0.5),
                    yRange=(frame.y0_px - 0.5, frame.y0_px + rows - 0.5), padding=0,
                )
            self._rect = rect
        self.frame_index = frame.index

    @property
    def sensor_rect(self) -> tuple[int, int, int, int] | None:
        """The image shown: (x0, y0, width, height) in sensor px; None before a frame."""
        return None if self._rect is None else self._rect[:4]

    def _levels_changed(self, histogram) -> None:
        if not self._setting_levels:  # the user dragged the histogram's levels
            self.auto_levels = False
            lo, hi = histogram.getLevels()
            self.levels = (float(lo), float(hi))

    def set_rois(self, table: RoiTable | None, selected=(), reference=()) -> None:
        """Draw the ROI boxes of ``table`` with their bead ids, coloured by role."""
        self.roi_table = table
        if table is None or table.ids.size == 0:
            self.labels.set_labels([], [], [], [])
            for item in self.boxes.values():
                item.setData([], [])
            return
        ids = table.ids
        is_sel = np.isin(ids, np.asarray(list(selected), np.int64))
        is_ref = np.isin(ids, np.asarray(list(reference), np.int64)) & ~is_sel
        masks = {"selected": is_sel, "reference": is_ref, "other": ~(is_sel | is_ref)}
        for kind, mask in masks.items():
            xs, ys = box_outlines(table.x0[mask], table.y0[mask], table.size)
            self.boxes[kind].setData(xs, ys, connect="finite")
        colours = np.where(is_sel[:, None], SELECTED_COLOUR, np.where(
            is_ref[:, None], REFERENCE_COLOUR, OTHER_COLOUR))
        self.labels.set_labels(
            np.asarray(table.x0, float) - 0.5, np.asarray(table.y0, float) - 0.5,
            [str(int(b)) for b in ids], colours.tolist(),
        )

    def set_centres(self, x_px: np.ndarray, y_px: np.ndarray, frame_index: int = -1) -> None:
        """Mark tracked bead centres (sensor px) of camera frame ``frame_index``; NaN (lost)
        are left out."""
        self.centres_frame = int(frame_index)
        ok = np.isfinite(x_px) & np.isfinite(y_px)
        self.centres.setData(x=np.asarray(x_px)[ok], y=np.asarray(y_px)[ok])

    def scene_point(self, x_px: float, y_px: float) -> QtCore.QPoint:
        """Widget pixel of sensor position (``x_px``, ``y_px``)."""
        scene = self.plot.vb.mapViewToScene(QtCore.QPointF(x_px, y_px))
        return self.mapFromScene(scene)
