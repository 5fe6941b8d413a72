"""Bead editing with the mouse on the camera image: the camera plot's view box.

- left click on the image, outside every ROI: add a bead centred there;
- left drag of an ROI box: move that bead's ROI by the drag (a dashed box follows);
- right click inside an ROI: remove that bead (elsewhere: pyqtgraph's view menu).

Positions are sensor pixels (the view's coordinates, see :mod:`._camera_view`). The view
box only emits signals; the window sends them as commands to the instrument's owner.
Dragging outside an ROI, and the wheel, still pan and zoom.
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets

__all__ = ["BeadViewBox"]


class BeadViewBox(pg.ViewBox):
    """A :class:`pyqtgraph.ViewBox` that turns clicks and drags into bead edits.

    :param camera: the :class:`~._camera_view.CameraView` whose ``roi_table`` (ROI
        boxes) and ``sensor_rect`` (the image's ``(x0, y0, width, height)`` px) it reads.
    """

    #: add a bead centred at (x_px, y_px)
    sigAddBead = QtCore.pyqtSignal(float, float)
    #: re-centre bead_id's ROI at (x_px, y_px)
    sigMoveBead = QtCore.pyqtSignal(int, float, float)
    #: stop tracking bead_id
    sigRemoveBead = QtCore.pyqtSignal(int)

    def __init__(self, camera: Any) -> None:
        super().__init__()
        self._camera = camera
        self._drag: tuple[int, QtCore.QPointF, float, float] | None = None
        self._preview = QtWidgets.QGraphicsRectItem()
        pen = pg.mkPen((255, 255, 255), width=1.5, style=QtCore.Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        self._preview.setPen(pen)
        self._preview.setBrush(QtGui.QBrush(QtCore.Qt.BrushStyle.NoBrush))
        self._preview.setVisible(False)
        self.addItem(self._preview, ignoreBounds=True)

    # -- geometry (sensor px) ------------------------------------------------------------
    def bead_at(self, x_px: float, y_px: float) -> int | None:
        """The bead whose ROI box holds (``x_px``, ``y_px``), or None."""
        table = getattr(self._camera, "roi_table", None)
        if table is None or table.ids.size == 0:
            return None
        left, top = table.x0 - 0.5, table.y0 - 0.5
        inside = (x_px >= left) & (x_px < left + table.size) & (y_px >= top) & (y_px < top + table.size)
        hits = inside.nonzero()[0]
        return int(table.ids[hits[0]]) if hits.size else None

    def on_sensor(self, x_px: float, y_px: float) -> bool:
        """True when (``x_px``, ``y_px``) lies on the image shown."""
        rect = getattr(self._camera, "sensor_rect", None)
        if rect is None:
            return False
        x0, y0, cols, rows = rect
        return x0 - 0.5 <= x_px < x0 + cols - 0.5 and y0 - 0.5 <= y_px < y0 + rows - 0.5

    def _roi_centre(self, bead: int) -> tuple[float, float]:
        table = self._camera.roi_table
        k = int((table.ids == bead).nonzero()[0][0])
        half = table.size // 2  # as rois_from_centres: x0 = rint(x) - size // 2
        return float(table.x0[k] + half), float(table.y0[k] + half)

    # -- mouse -------------------------------------------------------------------------
    def mouseClickEvent(self, ev) -> None:  # noqa: N802 - pyqtgraph's name
        pos = self.mapSceneToView(ev.scenePos())
        x, y = pos.x(), pos.y()
        button = ev.button()
        if button == QtCore.Qt.MouseButton.LeftButton:
            ev.accept()
            if self.bead_at(x, y) is None and self.on_sensor(x, y):
                self.sigAddBead.emit(x, y)
            return
        if button == QtCore.Qt.MouseButton.RightButton:
            bead = self.bead_at(x, y)
            if bead is not None:
                ev.accept()
                self.sigRemoveBead.emit(bead)
                return
        super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802 - pyqtgraph's name
        if ev.button() != QtCore.Qt.MouseButton.LeftButton or axis is not None:
            super().mouseDragEvent(ev, axis)
            return
        if ev.isStart():
            start = self.mapSceneToView(ev.buttonDownScenePos())
            bead = self.bead_at(start.x(), start.y())
            if bead is None:
                self._drag = None
            else:
                self._drag = (bead, start, *self._roi_centre(bead))
        if self._drag is None:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        bead, start, cx, cy = self._drag
        now = self.mapSceneToView(ev.scenePos())
        nx, ny = cx + now.x() - start.x(), cy + now.y() - start.y()
        size = self._camera.roi_table.size
        half = size // 2
        self._preview.setRect(QtCore.QRectF(nx - half - 0.5, ny - half - 0.5, size, size))
        self._preview.setVisible(not ev.isFinish())
        if ev.isFinish():
            self._drag = None
            self.sigMoveBead.emit(bead, nx, ny)
