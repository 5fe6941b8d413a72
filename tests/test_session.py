"""The user's entry points: `magscope demo`, `magscope ipython`, `magscope cleanup`.

Each runs as a user would start it, in its own process, against a real embedded Tiled
server on 127.0.0.1 in a temporary data folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from tiled.queries import Key

from magscope_devices.sim.world import SimParams
from magscope_ipc.shm import list_segments
from magscope_session import EmbeddedTiled, session_metadata

pytestmark = pytest.mark.system

MAGSCOPE = str(Path(sys.executable).with_name("magscope"))


def _env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ, MAGSCOPE_DATA_DIR=str(data_dir), MAGSCOPE_TILED_PORT="0")
    env.pop("MAGSCOPE_TILED_URI", None)
    env.pop("MAGSCOPE_TILED_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo-data")
    out = subprocess.run(
        [MAGSCOPE, "demo", "--data-dir", str(data_dir), "--port", "0"],
        capture_output=True, text=True, timeout=300, env=_env(data_dir),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return data_dir, out.stdout


def test_demo_prints_runs_and_how_to_read_them(demo_run):
    _, stdout = demo_run
    assert "4 runs in Tiled" in stdout
    assert re.search(r"tracking (\d+) beads", stdout)
    assert "from tiled.client import from_uri" in stdout
    assert len(re.findall(r"^  [0-9a-f-]{36}$", stdout, re.M)) == 4
    # bead data read back from Tiled: x, y, z of a few beads as numbers (a Z-LUT was swept)
    rows = re.findall(r"^ +(\d+) +([\d.]+) +(\S+) +(\S+) +(\S+)$", stdout, re.M)
    assert len(rows) == 8, stdout
    assert all(np.isfinite([float(v) for v in row[2:]]).all() for row in rows), rows


def test_demo_ends_with_a_picture_of_the_beads(demo_run):
    data_dir, stdout = demo_run
    png = data_dir / "demo.png"
    assert f"The beads and their traces: {png}" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def test_demo_writes_the_health_log(demo_run):
    data_dir, _ = demo_run
    lines = (data_dir / "logs" / "health-default.log").read_text().splitlines()
    assert lines[0].split(" ", 2)[2].startswith("session started | camera ")
    assert lines[-1].split(" ", 2)[2].startswith("session ended | camera ")
    assert re.search(r"tracking [\d,]+ tracked \(\+[\d,]+ = [\d.]+/s\)", lines[-1]), lines[-1]


def test_demo_runs_read_back_from_tiled_after_a_restart(demo_run):
    data_dir, stdout = demo_run
    uids = re.findall(r"^  ([0-9a-f-]{36})$", stdout, re.M)
    with EmbeddedTiled(data_dir, port=0) as server:
        client = server.client()
        assert client[uids[0]].metadata["start"]["plan_name"] == "zlut_sweep"
        scan = client[uids[1]]
        assert scan.metadata["start"]["plan_name"] == "focus_scan"
        focus = scan["primary"]["microscope-focus"].read()
        assert np.allclose(np.asarray(focus), np.linspace(-2000, 2000, 9))
        frames = scan["primary"]["microscope-camera"].read()
        assert frames.shape == (9, 1, 768, 1024) and frames.dtype == np.uint8
        # the beads' ring patterns are there: a range far beyond the background's shot noise
        first = np.asarray(frames[0, 0], dtype=float)
        assert np.ptp(first) > 10 * first[:50, :50].std()
        counts = [client[uid] for uid in uids[2:]]
        heights = [run.metadata["start"]["magnet_height_mm"] for run in counts]
        assert heights == [4.0, 1.5]
        for run in counts:
            start = run.metadata["start"]
            assert start["instrument"] == "magscope-sim" and start["sim_seed"] == 0
            assert start["sample"] == "demo DNA tethers" and start["operator"]
            assert run["primary"]["microscope-camera"].read().shape == (20, 1, 768, 1024)
            # the beads were selected and tracked: 10 frames per event, every bead
            x = np.asarray(run["primary"]["microscope-tracker-x_nm"].read())
            assert x.shape[:2] == (20, 10) and x.shape[2] >= 20
            assert np.isfinite(x).mean() > 0.99
            z = np.asarray(run["primary"]["microscope-magnet_z"].read())
            assert np.all(z == start["magnet_height_mm"])
            # the health at the run's start and end: no frame late, no worker lost
            health = run["health"]
            assert len(health["microscope-health-frames_acquired"].read()) == 2
            assert np.all(np.asarray(health["microscope-health-workers_alive"].read()) >= 1)
            rate = np.asarray(health["microscope-health-camera_rate_hz"].read())
            assert np.all((rate > 50) & (rate < 110)), rate
        found = client.search(Key("start.plan_name") == "count_at_heights")
        assert sorted(found) == sorted(uids[2:])
        assert list(client.search(Key("start.sample") == "demo DNA tethers")) != []


SUBSCRIBER = """
import json, sys
from bluesky.callbacks.zmq import RemoteDispatcher

dispatcher = RemoteDispatcher("127.0.0.1:5578")
seen = []

def record(name, doc):
    seen.append([name, doc.get("plan_name") or doc.get("name") or doc.get("exit_status")])
    if name == "stop":
        json.dump(seen, open(sys.argv[1], "w"))
        dispatcher.stop()

dispatcher.subscribe(record)
print("LISTENING", flush=True)
dispatcher.start()
"""


def test_ipython_profile_gives_the_session_and_streams_documents(tmp_path):
    """`magscope ipython -c ...` as a user starts it: RE, the microscope, every plan, a
    Tiled client, the BestEffortCallback and progress bars; a run's documents reach a
    subscriber in another process through the 0MQ proxy that `magscope ipython` starts."""
    received = tmp_path / "received.json"
    subscriber = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, str(received)], stdout=subprocess.PIPE, text=True,
        env=_env(tmp_path),
    )
    assert subscriber.stdout is not None and subscriber.stdout.readline().startswith("LISTENING")
    plans = (
        "zlut_sweep force_calibration force_extension rotation_extension force_ramp "
        "force_clamp auto_select_beads find_reference_beads load_zlut load_force_calibration"
    )
    code = (
        "import time; "
        "print('SESSION', type(RE).__name__, microscope.name, camera.name, "
        "callable(focus_scan), callable(count_at_heights), type(tiled).__name__, "
        "RE.md['instrument'], type(bec).__name__, type(RE.waiting_hook).__name__); "
        f"print('PLANS', all(callable(globals()[p]) for p in {plans.split()!r})); "
        "time.sleep(2.0); "  # let the subscriber's connection through the proxy settle
        "RE(bps.wait_for([tracker.find_beads])); "
        "uid = RE(count_at_heights(microscope, [6.0], num=2)).plan_result[0]; "
        "print('RUN', uid in tiled); "
        "print('KEYS', sorted(tiled[uid].metadata['start'])); "
        "h = tiled[uid]['health']; "
        "print('HEALTH', ([int(v) for v in h['microscope-health-frames_acquired'].read()], "
        "[int(v) for v in h['microscope-health-workers_alive'].read()])); "
        "import psutil; kids = {p.pid for p in psutil.Process().children(recursive=True)}; "
        "print('VIEWER', [p.info['pid'] for p in psutil.process_iter(['pid', 'cmdline']) "
        "if p.info['pid'] in kids and 'magscope_viewer' in ' '.join(p.info['cmdline'] or [])])"
    )
    out = subprocess.run(
        [MAGSCOPE, "ipython", "--viewer", "--data-dir", str(tmp_path), "-c", code],
        capture_output=True, text=True, timeout=300, env=_env(tmp_path),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("SESSION"))
    assert line.split()[1:] == [
        "MagscopeRunEngine", "microscope", "microscope-camera", "True", "True", "CatalogOfBlueskyRuns",
        "magscope-sim", "BestEffortCallback", "ProgressBarManager",
    ]
    assert "PLANS True" in out.stdout
    assert "RUN True" in out.stdout
    # --viewer: the live viewer ran as a child of the session and ended with it
    viewers = eval(next(x for x in out.stdout.splitlines() if x.startswith("VIEWER"))[7:])
    assert viewers, out.stdout[-2000:]  # (the viewer, and its lifeline launcher)
    assert not [p for p in viewers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    keys = eval(next(x for x in out.stdout.splitlines() if x.startswith("KEYS"))[5:])
    assert set(session_metadata(sim_params=SimParams())) <= set(keys)
    # the camera process and its shared memory went away with IPython
    assert [s for s in list_segments("default") if not s.owner_alive] == []
    # the subscriber in another process saw the whole run, start to stop
    subscriber.wait(30)
    names = [n for n, _ in json.loads(received.read_text())]
    assert names[0] == "start" and names[-1] == "stop"
    # two events of the primary stream, the health at the start and at the end
    assert "descriptor" in names and names.count("event") == 2 + 2
    # the run in Tiled says how healthy the instrument was: frames counted on, workers up
    acquired, alive = eval(next(x for x in out.stdout.splitlines() if x.startswith("HEALTH"))[7:])
    assert len(acquired) == 2 and acquired[1] > acquired[0] > 0 and min(alive) >= 1
    # and the session wrote its health log, a line when it started and one when it ended
    log = (tmp_path / "logs" / "health-default.log").read_text().splitlines()
    assert "session started | camera " in log[0] and "session ended | camera " in log[-1]
    assert all(" frames/s (set 100.0)" in line for line in log)


def test_cleanup_command_ends_orphans_and_reports(tmp_path):
    """A child whose owner died (tagged with the owner) is ended by `magscope cleanup`."""
    import time

    import psutil

    from magscope_ipc.processes import ENV_OWNER

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    from magscope_ipc.shm import owner_token

    tag = owner_token(owner.pid)
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env=dict(os.environ, **{ENV_OWNER: tag}), start_new_session=True,
    )
    try:
        out = subprocess.run([MAGSCOPE, "cleanup"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0
        assert orphan.poll() is None, "an owner that runs keeps its children"
        owner.kill()
        owner.wait()
        out = subprocess.run([MAGSCOPE, "cleanup"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"ended orphaned process {orphan.pid}" in out.stdout
        assert "stale shared-memory segment(s) removed" in out.stdout
        deadline = time.monotonic() + 10
        while orphan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert orphan.poll() is not None and not psutil.pid_exists(orphan.pid) or (
            psutil.Process(orphan.pid).status() == "zombie"
        )
    finally:
        owner.kill()
        orphan.kill()


def test_tiled_command_serves_in_the_foreground_until_ctrl_c(tmp_path):
    import signal
    import time

    proc = subprocess.Popen(
        [MAGSCOPE, "tiled", "--data-dir", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path),
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line or not line:
                break
        assert any("Press Ctrl-C" in x for x in lines), "".join(lines)
        key = (tmp_path / "tiled-api-key").read_text().strip()
        assert key not in "".join(lines) and "--show-key prints it" in "".join(lines)
        server = EmbeddedTiled(tmp_path, port=0)
        assert server._running_elsewhere() is not None  # the state file names a live server
        proc.send_signal(signal.SIGINT)
        # drain the output while waiting: a full pipe would block the server's shutdown
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, rest[-3000:]
    finally:
        proc.kill()
    assert not (tmp_path / "tiled-server.json").exists()
    # the key is in no log, and every file the server made is the owner's only
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "catalog.db" for p in files)
    for path in files:
        assert not path.stat().st_mode & 0o077, path
        if ".log" in path.name:
            assert key not in path.read_text(errors="replace"), path


def test_services_refuse_a_taken_address_naming_the_holder(tmp_path):
    """No silent takeover: each service checks its address first and names who holds it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        holder = f"pid {os.getpid()}"
        for argv in (
            [MAGSCOPE, "tiled", "--data-dir", str(tmp_path), "--port", str(port)],
            [MAGSCOPE, "redis", "--port", str(port)],
        ):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                 env=_env(tmp_path))
            assert out.returncode == 2, (argv, out.stdout, out.stderr)
            assert holder in out.stderr and str(port) in out.stderr, out.stderr


def test_tiled_replay_command_with_nothing_to_send(tmp_path):
    out = subprocess.run(
        [MAGSCOPE, "tiled", "replay", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=_env(tmp_path),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Nothing to replay" in out.stdout


def test_unknown_arguments_are_refused():
    out = subprocess.run([MAGSCOPE, "demo", "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr
