"""Overlays of the camera panel, each one graphics item for all beads.

The camera repaints at every new frame, and with it every item over the image: a
``pg.TextItem`` per bead costs a transform update and a text layout each time, and a
``ScatterPlotItem`` rebuilds its spots; with 100 beads that was most of a refresh.

- :class:`BeadLabels`: the bead ids, drawn in one ``paint`` at a fixed screen size (they
  do not grow with the zoom), cached by Qt as a pixmap until they or the zoom change.
- :class:`CentreMarks`: "+" marks of fixed screen size at the tracked centres, one
  ``drawLines`` call.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui, QtWidgets


class BeadLabels(pg.GraphicsObject):
    """Texts at view positions (sensor px), each in its own colour, drawn in one go."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._x = np.zeros(0)
        self._y = np.zeros(0)
        self._colours: list[QtGui.QColor] = []
        self._static: list[QtGui.QStaticText] = []
        self._rect = QtCore.QRectF()
        self.font = QtGui.QFont()
        # drawn again only when the labels or the zoom change, not at every new frame
        self.setCacheMode(QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache)

    def set_labels(self, x_px, y_px, texts, colours) -> None:
        """Put ``texts`` with their bottom-left corner at (``x_px``, ``y_px``) (view
        coordinates); ``colours``: one (r, g, b) per text."""
        self.prepareGeometryChange()
        self._x = np.asarray(x_px, float)
        self._y = np.asarray(y_px, float)
        self.texts = [str(t) for t in texts]
        made: dict[tuple, QtGui.QColor] = {}
        self._colours = [made.setdefault(tuple(c), pg.mkColor(tuple(c))) for c in colours]
        self._static = [QtGui.QStaticText(t) for t in self.texts]
        if self._x.size:
            # the text's own extent is in screen px: a generous margin in view units
            # comes from the item's pixel size at paint time (dataBounds is the anchors')
            self._rect = QtCore.QRectF(
                float(self._x.min()), float(self._y.min()),
                float(np.ptp(self._x)), float(np.ptp(self._y)),
            )
        else:
            self._rect = QtCore.QRectF()
        self.update()

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802 - Qt's name
        if self._rect.isNull() and not self._x.size:
            return QtCore.QRectF()
        px, py = self.pixelVectors()
        wx = 0.0 if px is None else px.length() * 60  # room for the text, 60 screen px
        wy = 0.0 if py is None else py.length() * 20
        return self._rect.adjusted(-wx, -wy, wx, wy)

    def viewTransformChanged(self) -> None:  # noqa: N802 - pyqtgraph's name
        self.prepareGeometryChange()

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        if not self.texts:
            return
        transform = painter.transform()
        painter.save()
        painter.resetTransform()
        painter.setFont(self.font)
        ascent = QtGui.QFontMetricsF(self.font).height()
        last = None
        for x, y, colour, text in zip(self._x, self._y, self._colours, self._static, strict=True):
            if colour is not last:
                painter.setPen(colour)
                last = colour
            point = transform.map(QtCore.QPointF(x, y))
            painter.drawStaticText(QtCore.QPointF(point.x(), point.y() - ascent), text)
        painter.restore()


class CentreMarks(pg.GraphicsObject):
    """"+" marks (``size`` screen px, ``pen``) at view positions (sensor px)."""

    def __init__(self, pen, size: float = 9.0) -> None:
        super().__init__()
        self.pen = pg.mkPen(pen)
        self.size = float(size)
        self._x = np.zeros(0)
        self._y = np.zeros(0)

    def setData(self, x, y) -> None:  # noqa: N802 - as pyqtgraph's items
        """Mark the points (``x``, ``y``) (view coordinates; NaN are left out)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        ok = np.isfinite(x) & np.isfinite(y)
        self.prepareGeometryChange()
        self._x, self._y = x[ok], y[ok]
        self.update()

    def getData(self) -> tuple[np.ndarray, np.ndarray]:  # noqa: N802 - as pyqtgraph's items
        return self._x, self._y

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802 - Qt's name
        if not self._x.size:
            return QtCore.QRectF()
        px, py = self.pixelVectors()
        wx = 0.0 if px is None else px.length() * self.size
        wy = 0.0 if py is None else py.length() * self.size
        lo_x, lo_y = float(self._x.min()), float(self._y.min())
        return QtCore.QRectF(
            lo_x - wx, lo_y - wy, float(self._x.max()) - lo_x + 2 * wx,
            float(self._y.max()) - lo_y + 2 * wy,
        )

    def viewTransformChanged(self) -> None:  # noqa: N802 - pyqtgraph's name
        self.prepareGeometryChange()

    def paint(self, painter: QtGui.QPainter, *args) -> None:
        if not self._x.size:
            return
        transform = painter.transform()
        # device px of the centres: (x, y) -> (m11 x + m21 y + dx, m12 x + m22 y + dy)
        dx = transform.m11() * self._x + transform.m21() * self._y + transform.dx()
        dy = transform.m12() * self._x + transform.m22() * self._y + transform.dy()
        h = self.size / 2
        lines = [
            QtCore.QLineF(a - h, b, a + h, b) for a, b in zip(dx.tolist(), dy.tolist(), strict=True)
        ] + [
            QtCore.QLineF(a, b - h, a, b + h) for a, b in zip(dx.tolist(), dy.tolist(), strict=True)
        ]
        painter.save()
        painter.resetTransform()
        painter.setPen(self.pen)
        painter.drawLines(*lines)
        painter.restore()
