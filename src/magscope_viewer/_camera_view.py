"""The camera panel: the live image with levels, ROI boxes with bead ids, tracked centres.

Coordinates are sensor pixels: the centre of sensor pixel column ``i`` sits at ``x = i``
(as in the track ring, ``x_nm = x_px * nm_per_px``), so the image is drawn from
``x0 - 0.5`` and an ROI of top-left pixel ``x0`` and side ``s`` spans
``x0 - 0.5 .. x0 + s - 0.5``. Rows grow downwards as on the sensor.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore

from magscope_tracking import RoiTable

from ._bead_editing import BeadViewBox
from ._live_source import LiveFrame

#: ROI box colours (RGB): selected, reference and other beads.
SELECTED_COLOUR = (255, 200, 0)
REFERENCE_COLOUR = (0, 200, 255)
OTHER_COLOUR = (90, 200, 90)
CENTRE_COLOUR = (255, 60, 60)


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
        self.addItem(self.histogram)
        self.boxes = {
            kind: pg.PlotDataItem(pen=pg.mkPen(colour, width=1.5), connect="finite")
            for kind, colour in (
                ("other", OTHER_COLOUR), ("reference", REFERENCE_COLOUR),
                ("selected", SELECTED_COLOUR),
            )
        }
        for item in self.boxes.values():
            self.plot.addItem(item)
        self.centres = pg.ScatterPlotItem(
            symbol="+", size=9, pen=pg.mkPen(CENTRE_COLOUR, width=1.5), brush=None
        )
        self.plot.addItem(self.centres)
        self._labels: list[pg.TextItem] = []
        self._rect: tuple[int, int, int, int] | None = None
        self._levels_set = False
        self.frame_index = -1
        self.roi_table: RoiTable | None = None

    def set_frame(self, frame: LiveFrame) -> None:
        """Show ``frame`` (levels: the histogram's; set from the first frame's 0.5 and
        99.5 percentiles, then left to the user)."""
        image = frame.image
        rows, cols = image.shape
        if not self._levels_set:
            lo, hi = np.percentile(image, [0.5, 99.5])
            self.image.setImage(image, autoLevels=False, levels=(float(lo), float(hi) + 1))
            self.histogram.setLevels(float(lo), float(hi) + 1)
            self._levels_set = True
        else:
            self.image.setImage(image, autoLevels=False)
        rect = (frame.x0_px, frame.y0_px, cols, rows)
        if rect != self._rect:
            self.image.setRect(QtCore.QRectF(frame.x0_px - 0.5, frame.y0_px - 0.5, cols, rows))
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
        return self._rect

    def set_rois(self, table: RoiTable | None, selected=(), reference=()) -> None:
        """Draw the ROI boxes of ``table`` with their bead ids, coloured by role."""
        self.roi_table = table
        for label in self._labels:
            self.plot.removeItem(label)
        self._labels = []
        if table is None or table.ids.size == 0:
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
        for k, bead in enumerate(ids):
            kind = "selected" if is_sel[k] else "reference" if is_ref[k] else "other"
            colour = {"selected": SELECTED_COLOUR, "reference": REFERENCE_COLOUR}.get(
                kind, OTHER_COLOUR
            )
            label = pg.TextItem(str(int(bead)), color=colour, anchor=(0, 1))
            label.setPos(float(table.x0[k]) - 0.5, float(table.y0[k]) - 0.5)
            self.plot.addItem(label)
            self._labels.append(label)

    def set_centres(self, x_px: np.ndarray, y_px: np.ndarray) -> None:
        """Mark tracked bead centres (sensor px); NaN (lost) are left out."""
        ok = np.isfinite(x_px) & np.isfinite(y_px)
        self.centres.setData(x=np.asarray(x_px)[ok], y=np.asarray(y_px)[ok])

    def scene_point(self, x_px: float, y_px: float) -> QtCore.QPoint:
        """Widget pixel of sensor position (``x_px``, ``y_px``)."""
        scene = self.plot.vb.mapViewToScene(QtCore.QPointF(x_px, y_px))
        return self.mapFromScene(scene)
