"""A lab's Tiled deployment: several stateless Tiled processes on one PostgreSQL database.

:func:`facility_config` is the server config ``magscope tiled config --facility`` writes.
It holds no secret: the catalog and table-store URIs (with their passwords) and the API
key come from the environment of each server process, ``$MAGSCOPE_TILED_CATALOG``,
``$MAGSCOPE_TILED_TABLES`` and ``$TILED_SINGLE_USER_API_KEY`` (Tiled expands ``${VAR}``
in its config files). Detector files (HDF5 frames, video) live on a filesystem every
server process and instrument share, under ``<data root>/detectors``, served as readable
storage; Tiled's own writable arrays go under ``<data root>/writable``.

Deploying: run ``tiled catalog init $MAGSCOPE_TILED_CATALOG`` once (several processes
initialising at once race), then start as many ``magscope tiled --config FILE --port P`` as
the load needs, behind one address. Instruments write with ``MAGSCOPE_TILED_URI`` and
their key, as with the embedded server (``docs/deploy.md``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ENV_TABLES", "facility_config", "write_facility_config"]

ENV_TABLES = "MAGSCOPE_TILED_TABLES"
_SQL_TABLE_MIMETYPE = "application/x-tiled-sql-table"


def facility_config(data_root: str | os.PathLike, *, host: str = "127.0.0.1",
                    access: bool = False) -> dict[str, Any]:
    """The Tiled server config of a lab deployment (see the module docstring).

    :param data_root: the shared folder of detector files and Tiled's writable arrays;
        an absolute path, the same on every server process and instrument.
    :param host: the interface the servers bind (127.0.0.1 unless the lab asks).
    :param access: per-instrument keys and access tags (:mod:`._tiled_access`) in place
        of the one single-user key.
    """
    root = Path(data_root)
    if not root.is_absolute():
        raise ValueError(f"data_root must be an absolute path (the same on every machine "
                         f"of the lab), got {str(root)!r}")
    config: dict[str, Any] = {
        "authentication": {"single_user_api_key": "${TILED_SINGLE_USER_API_KEY}"},
        "trees": [{
            "path": "/",
            "tree": "catalog",
            "args": {
                "uri": "${MAGSCOPE_TILED_CATALOG}",
                "writable_storage": [(root / "writable").as_posix(), "${" + ENV_TABLES + "}"],
                "readable_storage": [(root / "detectors").as_posix()],
                "specs": [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}],
                "adapters_by_mimetype": {
                    _SQL_TABLE_MIMETYPE: "magscope_session._tiled_adapters:EventTableAdapter",
                },
                "init_if_not_exists": False,  # `tiled catalog init` once, before any server
            },
        }],
        "uvicorn": {"host": host, "access_log": False},
    }
    if access:
        from ._tiled_access import ROOT_TREE_ARGS, access_sections

        config.update(access_sections())
        config["trees"][0]["args"].update(ROOT_TREE_ARGS)
    return config


def write_facility_config(path: str | os.PathLike, data_root: str | os.PathLike, *,
                          host: str = "127.0.0.1", access: bool = False) -> Path:
    """Write :func:`facility_config` to ``path`` (JSON, which is YAML); returns it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(facility_config(data_root, host=host, access=access), indent=2) + "\n")
    return out
