"""The profile panel: the selected bead's radial profile beside its Z-LUT profile at the
matched z, and the bead's Z-LUT as an image (radius x z) with the matched z marked.

The computation is in :mod:`magscope_viewer._profile`; this module only draws.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore, QtWidgets

from magscope_tracking import ZLUT

from ._profile import BeadProfile

MEASURED_PEN = pg.mkPen((255, 200, 60), width=2)
LUT_PEN = pg.mkPen((80, 180, 255), width=2, style=QtCore.Qt.PenStyle.DashLine)


class ProfilePanel(QtWidgets.QWidget):
    """Radial profile and Z-LUT of one bead.

    ``bead_spin``: the bead shown (-1: the window's first selected bead).
    """

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.bead_spin = QtWidgets.QSpinBox()
        self.bead_spin.setRange(-1, 1_000_000)
        self.bead_spin.setValue(-1)
        self.bead_spin.setSpecialValueText("first selected")
        self.bead_spin.setMinimumWidth(140)
        self.message = QtWidgets.QLabel("no bead")
        self.zlut_label = QtWidgets.QLabel("no Z-LUT loaded")
        self.zlut_label.setStyleSheet("color: #888;")
        for label in (self.message, self.zlut_label):  # long texts never widen the window
            label.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Preferred)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("bead"))
        top.addWidget(self.bead_spin)
        top.addWidget(self.message, 4)
        top.addWidget(self.zlut_label, 1)

        self.plots = pg.GraphicsLayoutWidget()
        self.profile_plot = self.plots.addPlot(row=0, col=0)
        self.profile_plot.setLabel("bottom", "radius (px)")
        self.profile_plot.setLabel("left", "profile (rel. to background)")
        self.profile_plot.getAxis("left").enableAutoSIPrefix(False)
        self.profile_plot.showGrid(x=True, y=True, alpha=0.2)
        legend = self.profile_plot.addLegend(offset=(-5, 5))
        self.measured = self.profile_plot.plot(pen=MEASURED_PEN, name="this frame")
        self.lut_curve = self.profile_plot.plot(pen=LUT_PEN, name="Z-LUT at matched z")
        legend.setLabelTextSize("8pt")

        self.lut_plot = self.plots.addPlot(row=0, col=1)
        self.lut_plot.setLabel("bottom", "radius (px)")
        self.lut_plot.setLabel("left", "z (nm)")
        self.lut_image = pg.ImageItem(axisOrder="row-major")
        self.lut_image.setColorMap(pg.colormap.get("viridis"))
        self.lut_plot.addItem(self.lut_image)
        self.z_line = pg.InfiniteLine(angle=0, pen=pg.mkPen((255, 80, 80), width=1.5))
        self.z_line.setVisible(False)
        self.lut_plot.addItem(self.z_line)
        self.plots.ci.layout.setColumnStretchFactor(0, 3)
        self.plots.ci.layout.setColumnStretchFactor(1, 2)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.plots, 1)
        self._lut_key: tuple | None = None
        self.shown: BeadProfile | None = None

    def chosen_bead(self, selected: list[int]) -> int | None:
        """The bead to show: the spin box's, or the first of ``selected``."""
        value = int(self.bead_spin.value())
        if value >= 0:
            return value
        return int(selected[0]) if selected else None

    def show_message(self, text: str) -> None:
        """Nothing to draw: say why (and clear the curves)."""
        self.message.setText(text)
        self.measured.setData([], [])
        self.lut_curve.setData([], [])
        self.z_line.setVisible(False)
        self.shown = None

    def show_zlut(self, zlut: ZLUT | None, index: int, message: str) -> None:
        """Draw the LUT of bead row ``index`` as an image (radius x z); clear it for
        None or index < 0."""
        short = message if zlut is None else message.split(":")[0]  # the file: tooltip
        self.zlut_label.setText(short)
        self.zlut_label.setToolTip(message)
        key = (id(zlut), index)
        if key == self._lut_key:
            return
        self._lut_key = key
        if zlut is None or index < 0:
            self.lut_image.clear()
            return
        planes = np.ascontiguousarray(zlut.profiles[index])  # (n_planes, n_bins)
        z0, z1 = zlut.z_range_nm
        radius = zlut.bins.radius_px
        step = (z1 - z0) / max(1, zlut.n_planes - 1)
        lo, hi = np.percentile(planes, [1, 99])
        self.lut_image.setImage(planes, autoLevels=False, levels=(float(lo), float(hi)))
        self.lut_image.setRect(QtCore.QRectF(
            -zlut.bin_px / 2, z0 - step / 2, radius + zlut.bin_px, (z1 - z0) + step
        ))
        self.lut_plot.autoRange()

    def show_profile(self, result: BeadProfile) -> None:
        self.shown = result
        self.measured.setData(result.radii_px, result.profile)
        if result.lut_profile is not None:
            self.lut_curve.setData(result.radii_px, result.lut_profile)
        else:
            self.lut_curve.setData([], [])
        z_ok = math.isfinite(result.z_nm)
        self.z_line.setVisible(z_ok and result.lut_index >= 0)
        if z_ok:
            self.z_line.setValue(result.z_nm)
        text = (
            f"bead {result.bead_id} · frame {result.frame_index} · "
            f"x {result.x_px:.2f} y {result.y_px:.2f} px"
        )
        if z_ok:
            text += f" · z {result.z_nm:.0f} nm (match {result.z_score:.3f})"
        elif result.lut_index < 0:
            text += ", no Z-LUT for this bead"
        if result.status != "OK":
            text += f" [{result.status}]"
        self.message.setText(text)
        self.message.setToolTip(text)
