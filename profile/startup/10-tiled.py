# Every run goes to Tiled: the server named by MAGSCOPE_TILED_URI, else the embedded one
# (started here if it is not running; MAGSCOPE_TILED_PORT picks its port, 0 = any free).
# `tiled` is a client for reading past runs.
import os

from magscope_session.setup import subscribe_tiled_writer
from magscope_session.tiled_server import DEFAULT_PORT, resolve_tiled

tiled_target = resolve_tiled(port=int(os.environ.get("MAGSCOPE_TILED_PORT", DEFAULT_PORT)))
tiled_writer = subscribe_tiled_writer(RE, tiled_target)
tiled = tiled_target.client()
print(f"Runs go to Tiled at {tiled_target.uri} ({tiled_target.source}).")
