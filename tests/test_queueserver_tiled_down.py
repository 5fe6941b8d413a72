"""The queue starts while the Tiled server is down: it runs anyway, spooling the
documents on local disk, and nothing is lost once the server is back (``magscope tiled
replay``). Its own module: the queueserver stack uses the default ports, one at a time."""

from __future__ import annotations

import subprocess

import pytest
from bluesky_queueserver_api import BPlan

from magscope_session import EmbeddedTiled
from process_helpers import free_port
from test_queueserver import MAGSCOPE, Stack, _stack_env

pytestmark = pytest.mark.system


def test_queue_runs_with_tiled_down_and_the_run_arrives_after_replay(tmp_path):
    server = EmbeddedTiled(tmp_path, port=free_port())
    uri = f"http://127.0.0.1:{server.port}"
    env = _stack_env(tmp_path, MAGSCOPE_TILED_URI=uri, MAGSCOPE_TILED_API_KEY=server.api_key)
    stack = Stack(tmp_path, env)
    try:
        assert "WARNING" in stack.output() and "spooled" in stack.output()
        stack.open_environment()
        api = stack.api
        api.item_add(BPlan("count_at_heights", "microscope", [5.0], num=2, track=False))
        api.queue_start()
        api.wait_for_idle(timeout=120)
        last = api.history_get()["items"][-1]
        assert last["result"]["exit_status"] == "completed", last["result"]
        (uid,) = last["result"]["run_uids"]
        api.environment_close()
        api.wait_for_idle(timeout=60)
    finally:
        stack.stop()
    with server:
        replay = subprocess.run(
            [MAGSCOPE, "tiled", "replay", "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=180, env=env,
        )
        assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-2000:]
        run = server.client()[uid]
        assert run.metadata["start"]["plan_name"] == "count_at_heights"
        assert run.metadata["stop"]["exit_status"] == "success"
        assert run["primary"]["microscope-magnet_z"].read().tolist() == [5.0, 5.0]
