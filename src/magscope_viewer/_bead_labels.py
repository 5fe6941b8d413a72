"""Bead-id labels of the camera panel as one graphics item.

A ``pg.TextItem`` per bead costs a transform update and a text layout at every repaint
of the camera, which happens at every new frame: with 100 beads that was most of a
refresh. :class:`BeadLabels` draws all of them in one ``paint``, with text at a fixed
screen size (it does not grow with the zoom), anchored at its bottom-left corner.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtGui


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
