"""The trace panel (x, y, z of the selected beads over time) and the z kymograph of all
beads. Both draw from a :class:`~magscope_viewer._traces.TraceHistory`; traces are
decimated (:func:`~magscope_viewer._traces.decimate_minmax_columns`) and all beads of the
kymograph are one image, so a redraw costs the same at any frame rate."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PyQt5 import QtCore

from ._traces import (
    AXES,
    decimate_minmax_columns,
    follow_range,
    kymograph,
    minus_reference,
    nanmedian_columns,
    points_for_width,
)

#: Points per drawn trace when the plot's width is not known yet (min/max pairs).
MAX_POINTS = 600
#: Traces drawn at most (the first selected beads).
MAX_TRACES = 20
_EMPTY = np.zeros(0)


def bead_pen(k: int) -> pg.QtGui.QPen:
    """The pen of the ``k``-th selected bead (the same colour in every panel); one pixel
    wide and cosmetic: Qt's fast path for lines."""
    return pg.mkPen(pg.intColor(k, hues=10, values=1, maxValue=255, minValue=150), width=1)


class TraceCurve(pg.PlotCurveItem):
    """A curve whose data bounds are given with its data (:meth:`set_trace`), so Qt's
    many bounding-rect queries at each repaint do not scan the data again."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._given: tuple[tuple[float, float], tuple[float, float]] | None = None

    def set_trace(self, x: np.ndarray, y: np.ndarray, x_bounds, y_bounds) -> None:
        """Data (x, y; NaN: a gap) and their (min, max) along x and y (NaN: none)."""
        self._given = None
        if np.isfinite(x_bounds).all() and np.isfinite(y_bounds).all():
            (x0, x1), (y0, y1) = x_bounds, y_bounds
            self._given = ((float(x0), float(x1)), (float(y0), float(y1)))
        self.setData(x, y, connect="finite")

    def dataBounds(self, ax, frac=1.0, orthoRange=None):  # noqa: N802, N803 - pyqtgraph's names
        if self._given is not None and frac >= 1.0 and orthoRange is None:
            return self._given[ax]
        return super().dataBounds(ax, frac, orthoRange)


def _time_axis(plot: pg.PlotItem) -> None:
    plot.setLabel("bottom", "t − newest frame (s)")


class TracePlots(pg.GraphicsLayoutWidget):
    """x, y and z (nm) of the selected beads against time (s before the newest frame).

    With ``relative`` (the default) each trace is drawn as the change from its bead's
    median over the window (Δx, Δy, Δz), so beads tens of µm apart share one scale.

    Speed: each trace is decimated to about one (min, max) pair per pixel column of the
    plot; the axes' ranges are set here (pyqtgraph's auto-range, which scans every curve
    at every change, is off) and only changed when the data leave them
    (:func:`~magscope_viewer._traces.follow_range`), so the axes are not redrawn at every
    refresh. A zoom or pan by the user stops that for the plot; the plot's "A" button
    gives it back.
    """

    def __init__(self, parent=None, relative: bool = True) -> None:
        super().__init__(parent)
        self.relative = relative
        self.plots: dict[str, pg.PlotItem] = {}
        self.curves: dict[str, list[TraceCurve]] = {}
        self._follow: dict[str, bool] = {}
        self._yrange: dict[str, tuple[float, float] | None] = {}
        self._titles: dict[str, str] = {}
        self._xrange: tuple[float, float] | None = None
        for row, axis in enumerate(AXES):
            plot = self.addPlot(row=row, col=0)
            plot.setLabel("left", ("Δ" if relative else "") + axis[0] + " (nm)")
            plot.showGrid(x=True, y=True, alpha=0.2)
            if row:
                plot.setXLink(self.plots[AXES[0]])
            plot.vb.disableAutoRange()
            plot.vb.sigRangeChangedManually.connect(
                lambda *_, axis=axis: self._follow.__setitem__(axis, False)
            )
            self.plots[axis] = plot
            self.curves[axis] = []
            self._follow[axis] = True
            self._yrange[axis] = None
        _time_axis(self.plots[AXES[-1]])
        self.legend = self.plots[AXES[0]].addLegend(offset=(5, 5), colCount=5)
        self._legend_ids: tuple[int, ...] = ()
        self.drawn_ids: np.ndarray = np.zeros(0, np.int64)

    def _curves_for(self, n: int) -> None:
        for axis in AXES:
            curves = self.curves[axis]
            while len(curves) < n:
                curve = TraceCurve(pen=bead_pen(len(curves)), connect="finite")
                self.plots[axis].addItem(curve)
                curves.append(curve)
            for k, curve in enumerate(curves):
                if curve.isVisible() != (k < n):
                    curve.setVisible(k < n)

    def _following(self, axis: str) -> bool:
        """Whether this panel sets the plot's ranges (False after a zoom or pan by the
        user, until the "A" button turned pyqtgraph's auto-range on again)."""
        vb = self.plots[axis].vb
        if any(vb.state["autoRange"]):  # the "A" button: ranges are ours again
            vb.disableAutoRange()
            self._follow[axis] = True
            self._yrange[axis] = None
            if axis == AXES[0]:
                self._xrange = None
        return self._follow[axis]

    def _set_title(self, axis: str, title: str) -> None:
        if self._titles.get(axis) != title:  # a new title re-lays the plot out
            self.plots[axis].setTitle(title, size="9pt")
            self._titles[axis] = title

    def show_traces(
        self, t: np.ndarray, values: dict[str, np.ndarray], ids: np.ndarray, selected,
        reference=(), subtract_reference: bool = False, window_s: float | None = None,
    ) -> None:
        """Draw the columns of ``values`` (frames, beads in the order of ``ids``) of the
        ``selected`` bead ids; ``t`` UNIX s. With ``subtract_reference`` the mean of the
        ``reference`` beads is subtracted frame by frame first. ``window_s``: the time
        axis spans the last ``window_s`` s (None: the span of ``t``)."""
        ids = np.asarray(ids)
        present = set(ids.tolist())
        chosen = [int(b) for b in selected if int(b) in present][:MAX_TRACES]
        cols = [int(np.flatnonzero(ids == b)[0]) for b in chosen]
        self._curves_for(len(chosen))
        rel = t - t[-1] if t.size else t
        width = self.plots[AXES[0]].vb.width()
        points = points_for_width(width) if width > 1 else MAX_POINTS
        for axis in AXES:
            data = values[axis]
            if subtract_reference and data.size:
                data = minus_reference(data, ids, reference)
            traces = np.asarray(data[:, cols], np.float64)
            have = bool(cols) and bool(np.isfinite(traces).any())
            if self.relative and have:
                traces = traces - nanmedian_columns(traces)
            if cols:
                td, yd = decimate_minmax_columns(rel, traces, points)
                finite = np.isfinite(yd)
                y_lo = np.where(finite, yd, np.inf).min(axis=0)
                y_hi = np.where(finite, yd, -np.inf).max(axis=0)
                x_lo, x_hi = td.min(axis=0), td.max(axis=0)
                for k in range(len(cols)):
                    if np.isfinite(y_lo[k]):
                        self.curves[axis][k].set_trace(
                            td[:, k], yd[:, k], (x_lo[k], x_hi[k]), (y_lo[k], y_hi[k])
                        )
                    else:  # no data (a lost bead, z without a Z-LUT): nothing to draw
                        self.curves[axis][k].set_trace(_EMPTY, _EMPTY, (0, 0), (0, 0))
                if have and self._following(axis):
                    new = follow_range(self._yrange[axis], y_lo.min(), y_hi.max())
                    if new is not None:
                        self.plots[axis].setYRange(*new, padding=0)
                        self._yrange[axis] = new
            note = "" if have or not cols else " — no data (no Z-LUT?)" if axis == "z_nm" else " — no data"
            suffix = " − reference" if subtract_reference and reference else ""
            what = f"{axis[0]} − bead median" if self.relative else axis[0]
            self._set_title(axis, f"{what}{suffix}{note}")
        span = float(window_s) if window_s else float(-rel[0]) if rel.size else 1.0
        xrange = (-span, 0.0)
        if self._following(AXES[0]) and xrange != self._xrange:
            self.plots[AXES[0]].setXRange(*xrange, padding=0.02)
            self._xrange = xrange
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
        for side in ("left", "bottom"):  # ids and seconds: no "x0.001" prefixes on an empty plot
            self.plot.getAxis(side).enableAutoSIPrefix(False)
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
        self._levels: tuple[float, float] | None = None
        self._rect: tuple[float, int] | None = None
        self._tick_ids: tuple[int, ...] | None = None
        self._title = ""

    def show_kymograph(self, t: np.ndarray, z: np.ndarray, ids: np.ndarray) -> None:
        """Bin ``z`` (frames, beads in the order of ``ids``, nm) over ``t`` (UNIX s) into
        one image, rows = beads (ticks give their ids). Levels (1st and 99th percentile),
        the image's rectangle and the ticks are set only when they change enough to see."""
        image = kymograph(z, self.columns)
        self.data = image
        if image.size == 0 or not np.isfinite(image).any():
            if self._title != "empty":
                self.image.clear()
                self.plot.setTitle("z kymograph — no z yet (no Z-LUT loaded?)", size="9pt")
                self._title, self._levels, self._rect = "empty", None, None
            return
        if self._title != "image":
            self.plot.setTitle("z kymograph, all beads", size="9pt")
            self._title = "image"
        lo, hi = np.nanpercentile(image, [1, 99])
        levels = follow_range(self._levels, float(lo), float(hi), margin=0.0)
        if levels is not None:
            if levels[1] <= levels[0]:
                levels = (levels[0], levels[0] + 1.0)
            self._levels = levels
            self.colorbar.setLevels(levels)
        self.image.setImage(image, autoLevels=False, levels=self._levels)
        span = float(t[-1] - t[0]) if t.size > 1 else 1.0
        beads = image.shape[0]
        rect = (span, beads)
        if self._rect is None or beads != self._rect[1] or abs(span - self._rect[0]) > 0.01 * span:
            self.image.setRect(QtCore.QRectF(-span, -0.5, span, beads))
            self._rect = rect
        key = tuple(int(b) for b in ids)
        if key != self._tick_ids:
            step = max(1, -(-beads // 6))
            ticks = [(float(k), str(int(ids[k]))) for k in range(0, beads, step)]
            self.plot.getAxis("left").setTicks([ticks])
            self._tick_ids = key
