"""The trace panel (x, y, z of the selected beads over time) and the z kymograph of all
beads. Both draw from a :class:`~magscope_viewer._traces.TraceHistory`; traces are
decimated (:func:`~magscope_viewer._traces.decimate_minmax`) and all beads of the
kymograph are one image, so a redraw costs the same at any frame rate."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore

from ._traces import AXES, decimate_minmax, kymograph, minus_reference

#: Points per drawn trace (min/max pairs): about one pair per screen pixel of a plot.
MAX_POINTS = 600
#: Traces drawn at most (the first selected beads).
MAX_TRACES = 20


def bead_pen(k: int) -> pg.QtGui.QPen:
    """The pen of the ``k``-th selected bead (the same colour in every panel)."""
    return pg.mkPen(pg.intColor(k, hues=10, values=1, maxValue=255, minValue=150), width=1.2)


def _time_axis(plot: pg.PlotItem) -> None:
    plot.setLabel("bottom", "t − newest frame (s)")


class TracePlots(pg.GraphicsLayoutWidget):
    """x, y and z (nm) of the selected beads against time (s before the newest frame).

    With ``relative`` (the default) each trace is drawn as the change from its bead's
    median over the window (Δx, Δy, Δz), so beads tens of µm apart share one scale.
    """

    def __init__(self, parent=None, relative: bool = True) -> None:
        super().__init__(parent)
        self.relative = relative
        self.plots: dict[str, pg.PlotItem] = {}
        self.curves: dict[str, list[pg.PlotDataItem]] = {}
        for row, axis in enumerate(AXES):
            plot = self.addPlot(row=row, col=0)
            plot.setLabel("left", ("Δ" if relative else "") + axis[0] + " (nm)")
            plot.showGrid(x=True, y=True, alpha=0.2)
            if row:
                plot.setXLink(self.plots[AXES[0]])
            self.plots[axis] = plot
            self.curves[axis] = []
        _time_axis(self.plots[AXES[-1]])
        self.legend = self.plots[AXES[0]].addLegend(offset=(5, 5), colCount=5)
        self._legend_ids: tuple[int, ...] = ()
        self.drawn_ids: np.ndarray = np.zeros(0, np.int64)

    def _curves_for(self, n: int) -> None:
        for axis in AXES:
            curves = self.curves[axis]
            while len(curves) < n:
                curve = pg.PlotDataItem(pen=bead_pen(len(curves)), connect="finite")
                curve.setClipToView(True)
                self.plots[axis].addItem(curve)
                curves.append(curve)
            for k, curve in enumerate(curves):
                curve.setVisible(k < n)

    def show_traces(
        self, t: np.ndarray, values: dict[str, np.ndarray], ids: np.ndarray, selected,
        reference=(), subtract_reference: bool = False,
    ) -> None:
        """Draw the columns of ``values`` (frames, beads in the order of ``ids``) of the
        ``selected`` bead ids; ``t`` UNIX s. With ``subtract_reference`` the mean of the
        ``reference`` beads is subtracted frame by frame first."""
        ids = np.asarray(ids)
        chosen = [int(b) for b in selected if int(b) in set(ids.tolist())][:MAX_TRACES]
        cols = [int(np.flatnonzero(ids == b)[0]) for b in chosen]
        self._curves_for(len(chosen))
        rel = t - t[-1] if t.size else t
        for axis in AXES:
            data = values[axis]
            if subtract_reference and data.size:
                data = minus_reference(data, ids, reference)
            for k, col in enumerate(cols):
                trace = data[:, col]
                if self.relative and np.isfinite(trace).any():
                    trace = trace - np.nanmedian(trace)
                td, yd = decimate_minmax(rel, trace, MAX_POINTS)
                self.curves[axis][k].setData(td, yd, connect="finite")
            have = data.size and np.isfinite(data[:, cols]).any() if cols else False
            note = "" if have or not cols else " — no data (no Z-LUT?)" if axis == "z_nm" else " — no data"
            suffix = " − reference" if subtract_reference and reference else ""
            what = f"{axis[0]} − bead median" if self.relative else axis[0]
            self.plots[axis].setTitle(f"{what}{suffix}{note}", size="9pt")
        if tuple(chosen) != self._legend_ids:
            self.legend.clear()
            for k, bead in enumerate(chosen):
                self.legend.addItem(self.curves[AXES[0]][k], str(bead))
            self._legend_ids = tuple(chosen)
        self.drawn_ids = np.asarray(chosen, np.int64)


class KymographView(pg.GraphicsLayoutWidget):
    """z (nm) of every bead of the ROI table against time: beads x time as one image."""

    def __init__(self, parent=None, columns: int = 400) -> None:
        super().__init__(parent)
        self.columns = columns
        self.plot = self.addPlot()
        _time_axis(self.plot)
        self.plot.setLabel("left", "bead id")
        self.plot.invertY(True)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.plot.addItem(self.image)
        self.colorbar = pg.ColorBarItem(
            values=(0, 1), colorMap=pg.colormap.get("viridis"), label="z (nm)", interactive=False
        )
        self.colorbar.setImageItem(self.image)
        self.addItem(self.colorbar)
        self.data = np.zeros((0, 0), np.float32)

    def show_kymograph(self, t: np.ndarray, z: np.ndarray, ids: np.ndarray) -> None:
        """Bin ``z`` (frames, beads in the order of ``ids``, nm) over ``t`` (UNIX s) into
        one image, rows = beads (ticks give their ids)."""
        image = kymograph(z, self.columns)
        self.data = image
        if image.size == 0 or not np.isfinite(image).any():
            self.image.clear()
            self.plot.setTitle("z kymograph — no z yet (no Z-LUT loaded?)", size="9pt")
            return
        self.plot.setTitle("z kymograph, all beads", size="9pt")
        lo, hi = np.nanpercentile(image, [1, 99])
        if hi <= lo:
            hi = lo + 1.0
        self.image.setImage(image, autoLevels=False, levels=(float(lo), float(hi)))
        self.colorbar.setLevels((float(lo), float(hi)))
        span = float(t[-1] - t[0]) if t.size > 1 else 1.0
        beads = image.shape[0]
        self.image.setRect(QtCore.QRectF(-span, -0.5, span, beads))
        step = max(1, -(-beads // 6))
        ticks = [(float(k), str(int(ids[k]))) for k in range(0, beads, step)]
        self.plot.getAxis("left").setTicks([ticks])
