"""Running the instrument: the run engine, the embedded Tiled server, past runs, the demo.

The session a user sets up (what ``magscope ipython``'s profile does), flat::

    from magscope_session import make_run_engine, resolve_tiled, session_metadata
    from magscope_session import subscribe_tiled_writer

    RE, bec = make_run_engine(session_metadata(sample="lambda DNA"))
    target = resolve_tiled()          # the embedded Tiled server, started if needed
    subscribe_tiled_writer(RE, target)

- the RunEngine: :func:`make_run_engine` (a :class:`MagscopeRunEngine`),
  :func:`session_metadata`, :func:`subscribe_tiled_writer`, :func:`close_at_exit`,
  :class:`RunProgress` (a line every few seconds while a long plan runs);
- Tiled: :func:`resolve_tiled` (-> :class:`TiledTarget`), :class:`EmbeddedTiled` (the
  local server), :func:`default_data_dir`, :class:`TiledUnreachableError`;
- past runs (:mod:`magscope_session.runs`): :func:`connect`, :func:`find_runs`,
  :func:`run_summary`, :func:`bead_tracks`, :func:`zlut_of`, :func:`force_calibration_of`;
- the instrument's state file: :func:`keep_instrument_state`, :func:`read_state_file`,
  :func:`restore_instrument_state`, :class:`InstrumentStateError`;
- :func:`run_demo`, the demo experiment (``magscope demo``).

The names load on first use (PEP 562): the embedded Tiled server runs as
``python -m magscope_session._tiled_server`` and the ``magscope`` command starts from
:mod:`magscope_session._cli`; neither should import Bluesky, ophyd-async and the devices
through this package's ``__init__``. The underscored modules are private: import from
here (or from :mod:`magscope_session.runs`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._demo import run_demo
    from ._instrument_state import (
        InstrumentStateError,
        keep_instrument_state,
        read_state_file,
        restore_instrument_state,
    )
    from ._progress import RunProgress
    from ._setup import (
        MagscopeRunEngine,
        close_at_exit,
        make_run_engine,
        session_metadata,
        subscribe_tiled_writer,
        watch_health,
    )
    from ._tiled_server import (
        EmbeddedTiled,
        TiledTarget,
        TiledUnreachableError,
        default_data_dir,
        resolve_tiled,
    )
    from .runs import (
        BeadNotInRunError,
        NoTracksError,
        bead_tracks,
        connect,
        find_runs,
        force_calibration_of,
        run_summary,
        zlut_of,
    )

#: exported name -> the submodule that defines it
_SOURCES = {
    "BeadNotInRunError": ".runs",
    "EmbeddedTiled": "._tiled_server",
    "InstrumentStateError": "._instrument_state",
    "MagscopeRunEngine": "._setup",
    "NoTracksError": ".runs",
    "RunProgress": "._progress",
    "TiledTarget": "._tiled_server",
    "TiledUnreachableError": "._tiled_server",
    "bead_tracks": ".runs",
    "close_at_exit": "._setup",
    "connect": ".runs",
    "default_data_dir": "._tiled_server",
    "find_runs": ".runs",
    "force_calibration_of": ".runs",
    "keep_instrument_state": "._instrument_state",
    "make_run_engine": "._setup",
    "read_state_file": "._instrument_state",
    "restore_instrument_state": "._instrument_state",
    "resolve_tiled": "._tiled_server",
    "run_demo": "._demo",
    "run_summary": ".runs",
    "session_metadata": "._setup",
    "subscribe_tiled_writer": "._setup",
    "watch_health": "._setup",
    "zlut_of": ".runs",
}

__all__ = [
    "BeadNotInRunError",
    "EmbeddedTiled",
    "InstrumentStateError",
    "MagscopeRunEngine",
    "NoTracksError",
    "RunProgress",
    "TiledTarget",
    "TiledUnreachableError",
    "bead_tracks",
    "close_at_exit",
    "connect",
    "default_data_dir",
    "find_runs",
    "force_calibration_of",
    "keep_instrument_state",
    "make_run_engine",
    "read_state_file",
    "resolve_tiled",
    "restore_instrument_state",
    "run_demo",
    "run_summary",
    "session_metadata",
    "subscribe_tiled_writer",
    "watch_health",
    "zlut_of",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
