"""Ctrl-C pauses; it never kills the instrument (issue 9, section 1).

A Python process runs plans on the simulated microscope with a plain RunEngine, as
``magscope ipython`` does; the test sends SIGINT to that process's *process group*, as a
terminal does on Ctrl-C. The camera process and the tracking workers run in sessions of
their own, so they never see it: one Ctrl-C pauses the plan and ``RE.resume()`` finishes
it; two Ctrl-C pause at once and ``RE.abort()`` runs the safe finish; a camera process
killed outright is restarted in place with its settings, and the next plan runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.system

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted
    from ophyd_async.core import init_devices
    from magscope_devices import make_simulated_microscope
    from magscope_plans import count_at_heights

    def say(**kw):
        print(json.dumps(kw), flush=True)

    def wait_for(word):
        line = sys.stdin.readline().strip()
        assert line == word, line

    RE = RunEngine(call_returns_result=True)
    with init_devices():
        mic = make_simulated_microscope(data_dir=sys.argv[1], name="microscope", ring_capacity=256)
    cam = mic.camera.process
    tracker = mic.tracker._service()

    def children():
        return {"camera": cam.process.pid, "workers": tracker.worker_pids()}

    announce = []

    def on_event(name, doc):  # once per "go": the plan runs, the test may press Ctrl-C
        if name == "event" and doc["seq_num"] == 3 and announce:
            announce.clear()
            say(step="running")
    RE.subscribe(on_event)

    from bluesky.run_engine import call_in_bluesky_event_loop
    def magnet():
        return call_in_bluesky_event_loop(mic.magnet_z.readback.get_value())

    say(step="ready", **children())
    wait_for("go")
    announce.append(1)
    plan = count_at_heights(mic, [3.0, 4.0], num=25, delay_s=0.1, track=False)
    try:
        RE(plan)
        say(step="not-paused")
    except RunEngineInterrupted:
        say(step="paused", state=RE.state, camera_alive=cam.running, magnet_mm=magnet(),
            **children())
    wait_for("resume")
    result = RE.resume()
    say(step="resumed", exit_status=result.exit_status, uids=len(result.plan_result),
        camera_alive=cam.running, magnet_mm=magnet(), **children())

    wait_for("go")
    announce.append(1)
    try:
        RE(count_at_heights(mic, [2.0], num=200, delay_s=0.05, track=False))
        say(step="not-paused")
    except RunEngineInterrupted:
        say(step="paused", state=RE.state, magnet_mm=magnet(), **children())
    wait_for("abort")
    result = RE.abort(reason="operator")
    say(step="aborted", exit_status=result.exit_status, magnet_mm=magnet(),
        camera_alive=cam.running, **children())

    wait_for("killed")
    deadline = time.monotonic() + 60
    while cam.restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    try:  # the first plan after it refuses, naming what happened, before anything moves
        RE(count_at_heights(mic, [5.0], num=5, track=False))
        refusal = ""
    except Exception as err:
        refusal = str(err)
    result = RE(count_at_heights(mic, [5.0], num=5, track=False))
    say(step="recovered", restarts=cam.restarts, reason=cam.last_failure, refusal=refusal,
        exit_status=result.exit_status, exposure_s=float(cam.control["exposure_s"]),
        frames=int(cam.ring.count), **children())
    mic.close()
    say(step="closed")
    """
)


class Session:
    """The script in its own process group, talked to line by line."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "session.py"
        script.write_text(SCRIPT)
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(script), str(tmp_path / "data")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )

    def expect(self, step: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                msg = json.loads(line)
                assert msg["step"] == step, (msg, self.stderr())
                return msg
        raise AssertionError(f"no '{step}' from the session:\n{self.stderr()}")

    def send(self, word: str) -> None:
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()

    def ctrl_c(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)

    def stderr(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        return self.process.stderr.read()[-4000:]


def test_ctrl_c_pauses_resumes_aborts_safely_and_a_killed_camera_recovers(tmp_path):
    session = Session(tmp_path)
    try:
        ready = session.expect("ready")
        group = os.getpgid(session.process.pid)
        for pid in [ready["camera"], *ready["workers"]]:
            assert os.getpgid(pid) != group  # out of reach of the terminal's Ctrl-C

        # one Ctrl-C: pause at the next checkpoint, resume to completion
        session.send("go")
        session.expect("running")
        session.ctrl_c()
        paused = session.expect("paused")
        assert paused["state"] == "paused"
        assert paused["camera_alive"]
        assert paused["camera"] == ready["camera"]
        assert paused["workers"] == ready["workers"]
        session.send("resume")
        resumed = session.expect("resumed")
        assert resumed["exit_status"] == "success"
        assert resumed["uids"] == 2
        assert resumed["camera_alive"] and resumed["camera"] == ready["camera"]
        assert resumed["magnet_mm"] == 8.0  # the safe finish ran

        # two Ctrl-C: pause now; abort runs the safe finish
        session.send("go")
        session.expect("running")
        session.ctrl_c()
        time.sleep(0.2)
        session.ctrl_c()
        paused = session.expect("paused")
        assert paused["magnet_mm"] == 2.0
        session.send("abort")
        aborted = session.expect("aborted")
        assert aborted["exit_status"] == "abort"
        assert aborted["magnet_mm"] == 8.0
        assert aborted["camera_alive"] and aborted["camera"] == ready["camera"]
        assert aborted["workers"] == ready["workers"]

        # a camera process killed outright is restarted in place; the next plan runs
        os.kill(ready["camera"], signal.SIGKILL)
        session.send("killed")
        recovered = session.expect("recovered")
        assert recovered["restarts"] == 1
        assert "SIGKILL" in recovered["reason"]
        assert "refused, nothing moved" in recovered["refusal"]
        assert "killed by SIGKILL and was restarted in place" in recovered["refusal"]
        assert recovered["camera"] != ready["camera"]
        assert recovered["exit_status"] == "success"
        assert recovered["exposure_s"] == 0.005
        session.expect("closed")
        assert session.process.wait(30) == 0
        for pid in [recovered["camera"], *recovered["workers"]]:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    finally:
        if session.process.poll() is None:
            session.process.kill()
