"""The Qt live viewer (PyQt5 + pyqtgraph), a separate process: ``magscope viewer`` or
``python -m magscope_viewer --instance NAME`` (see docs/viewer.md).

Public names (imported on first use, so ``import magscope_viewer`` stays cheap and
Qt-free):

- :class:`LiveSource`: read-only attachment to a running microscope's shared memory
  (newest frame, track ring, ROI table, health, connection state); no Qt.
- :class:`InstanceNotFoundError`, :func:`running_instances`.
- Commands to the instrument's owner: :class:`CommandClient` (no Qt; :class:`Reply`),
  :class:`CommandBar` (the window's auto-select button and reply line),
  :class:`BeadViewBox` (click adds, drag moves, right-click removes a bead).
- :class:`ViewerWindow`: the main window (camera, traces, kymograph, status; the axes,
  health and profile panels in tabbed docks).
- Panels: :class:`AxesPanel` (readbacks, limits, moving; emits ``move_requested(dict)``;
  lock placeholder), :class:`HealthPanel` (camera, tracking, workers, rings),
  :class:`ProfilePanel` (radial profile beside the Z-LUT match, the Z-LUT image); their
  pure parts :func:`bead_profile`, :func:`lut_profile_at`, :class:`ZlutFile`,
  :class:`BeadProfile`; :class:`WorkerStatus` in :class:`Health`.
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
    "CommandClient": "._command_client",
    "Reply": "._command_client",
    "CommandBar": "._command_bar",
    "BeadViewBox": "._bead_editing",
    "WorkerStatus": "._live_source",
    "AxesPanel": "._axes_panel",
    "HealthPanel": "._health_panel",
    "ProfilePanel": "._profile_panel",
    "BeadProfile": "._profile",
    "ZlutFile": "._profile",
    "bead_profile": "._profile",
    "lut_profile_at": "._profile",
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
