"""The Qt live viewer (PyQt5 + pyqtgraph), a separate process: ``magscope viewer`` or
``python -m magscope_viewer --instance NAME`` (see docs/viewer.md).

Public names (imported on first use, so ``import magscope_viewer`` stays cheap and
Qt-free):

- :class:`LiveSource`: read-only attachment to a running microscope's shared memory
  (newest frame, track ring, ROI table, health, connection state); no Qt.
- :class:`InstanceNotFoundError`, :func:`running_instances`.
- :class:`ViewerWindow`: the main window (camera, traces, kymograph, status).
- :class:`RunContext` (no Qt): plan, progress, results and exit status of the newest run
  from its documents; :class:`DocumentSubscriber` reads them from bluesky's 0MQ proxy in
  a worker thread; :class:`RunPanel` shows them (``ViewerWindow.add_run_panel``).
- :class:`RunSource`: a past run from Tiled with the interface of :class:`LiveSource`, up
  to a position the user scrubs; :class:`RunBrowser` finds runs (sample, plan, bead, date)
  and opens them for review (``ViewerWindow.add_run_browser``).
- Pure helpers: :func:`decimate_minmax`, :func:`kymograph`, :func:`minus_reference`,
  :class:`TraceHistory`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LiveSource": "._live_source",
    "LiveFrame": "._live_source",
    "Health": "._live_source",
    "InstanceNotFoundError": "._live_source",
    "running_instances": "._live_source",
    "TraceHistory": "._traces",
    "decimate_minmax": "._traces",
    "kymograph": "._traces",
    "minus_reference": "._traces",
    "CameraView": "._camera_view",
    "TracePlots": "._trace_plots",
    "KymographView": "._trace_plots",
    "ViewerWindow": "._window",
    "RunContext": "._run_stream",
    "DocumentSubscriber": "._run_stream",
    "RunPanel": "._run_panel",
    "RunSource": "._run_source",
    "RunBrowser": "._run_browser",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
