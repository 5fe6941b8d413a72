# Every run goes to Tiled: the server named by MAGSCOPE_TILED_URI, else the embedded one
# (started here if it is not running; MAGSCOPE_TILED_PORT picks its port, 0 = any free).
# If the named server does not answer, runs are spooled on local disk and sent when it
# does (or with `magscope tiled replay`): nothing is lost. `tiled` reads past runs.
import os
import warnings

from magscope_session import subscribe_tiled_writer
from magscope_session._tiled_server import (
    DEFAULT_PORT,
    TiledUnreachableError,
    resolve_tiled,
    unreachable_target,
)

try:
    tiled_target = resolve_tiled(port=int(os.environ.get("MAGSCOPE_TILED_PORT", DEFAULT_PORT)))
    tiled_writer = subscribe_tiled_writer(RE, tiled_target)
    tiled = tiled_target.client()
    print(f"Runs go to Tiled at {tiled_target.uri} ({tiled_target.source}).")
except TiledUnreachableError as err:
    tiled_target = unreachable_target()
    tiled_writer = subscribe_tiled_writer(RE, tiled_target, check=False)
    tiled = None
    warnings.warn(
        f"{err}\nRuns are spooled in {tiled_target.spool_dir} and sent to "
        f"{tiled_target.uri} when it answers (or with `magscope tiled replay`).",
        stacklevel=1,
    )
