"""``magscope tiled replay``: send spooled runs that are not (completely) in Tiled."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .document_writer import replay, unsent_spool_files
from .tiled_server import (
    DEFAULT_PORT,
    ENV_TILED_API_KEY,
    ENV_TILED_URI,
    SPOOL_SUBDIR,
    EmbeddedTiled,
    TiledServerError,
    TiledUnreachableError,
    default_data_dir,
)


def replay_main(
    data_dir: str | os.PathLike[str] | None = None,
    uri: str | None = None,
    api_key: str | None = None,
    *,
    port: int = DEFAULT_PORT,
) -> int:
    """Replay ``<data_dir>/spool`` into Tiled; print what was done; return an exit code.

    The server: ``uri`` (with ``api_key``), else ``$MAGSCOPE_TILED_URI`` (with
    ``$MAGSCOPE_TILED_API_KEY``), else the embedded server of ``data_dir``, attached to
    if it runs, else started on ``port`` (``magscope tiled replay --port``; 0 = any free
    port) for the replay and stopped afterwards.

    Returns 0 if every unsent run is now in Tiled (or there was none), 1 if some run
    failed or was skipped because a live session still writes it, 2 if no server answers.
    """
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir()
    spool = folder / SPOOL_SUBDIR
    pending = unsent_spool_files(spool)
    if not pending:
        print(f"Nothing to replay: no unsent runs in {spool}.")
        return 0
    print(f"{len(pending)} unsent run(s) in {spool}.")
    uri = uri or os.environ.get(ENV_TILED_URI) or None
    if uri is not None:
        api_key = api_key or os.environ.get(ENV_TILED_API_KEY) or None
    server: EmbeddedTiled | None = None
    try:
        if uri is None:
            server = EmbeddedTiled(folder, port=port)
            if (running := server._running_elsewhere()) is not None:
                uri, api_key, server = running, server.api_key, None
            else:
                print(f"Starting the embedded Tiled server of {folder} for the replay ...")
                server.start()
                uri, api_key = server.uri, server.api_key
        print(f"Replaying into {uri} ...")
        summary = replay(spool, uri, api_key, progress=lambda line: print("  " + line))
    except (TiledUnreachableError, TiledServerError) as err:
        print(f"Replay failed: {err}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    print(summary)
    return 0 if summary.ok and not summary.skipped_in_use else 1
