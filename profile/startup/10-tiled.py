# Every run goes to Tiled: the server named by MAGSCOPE_TILED_URI, else the embedded one
# (started here if it is not running). `tiled` is a client for reading past runs.
from magscope_session.setup import subscribe_tiled_writer
from magscope_session.tiled_server import resolve_tiled

tiled_target = resolve_tiled()
tiled_writer = subscribe_tiled_writer(RE, tiled_target)
tiled = tiled_target.client()
print(f"Runs go to Tiled at {tiled_target.uri} ({tiled_target.source}).")
