"""Shared pytest fixtures. Each section is self-contained; keep new sections below."""

from __future__ import annotations

import pytest

# ---------------------------------------------------------------------------------------
# Tiled data path: real embedded Tiled servers (subprocesses) on 127.0.0.1.
#   tiled_server   a running EmbeddedTiled (port=0, fresh data dir) shared by the tests of
#                  one module; 10-20 s to start on this machine, so share it. A test may
#                  stop and start it again (the port stays the same) but must leave it
#                  running.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    """A running embedded Tiled server with a fresh data dir, stopped after the module.

    Attributes used by tests: ``uri``, ``api_key``, ``client()``, ``detector_data_dir``
    (HDF5 files of detectors go there), ``spool_dir``, ``data_dir``.
    """
    from magscope_session.tiled_server import EmbeddedTiled

    server = EmbeddedTiled(tmp_path_factory.mktemp("tiled-data"), port=0)
    with server:
        yield server


# ---------------------------------------------------------------------------------------
# (other sections below)
# ---------------------------------------------------------------------------------------
