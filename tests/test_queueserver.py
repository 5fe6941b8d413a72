"""The queueserver, driven as a user drives it: ``magscope qserver`` (a real Redis, the RE
manager with the installed profile, the 0MQ proxy, the embedded Tiled server) and
``REManagerAPI()`` with no arguments.

The stack uses the default addresses (Redis 6379, manager 60615/60625, proxy 5577/5578),
so the modules that start it run one after the other, never beside a user's own stack.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from bluesky_queueserver_api import BFunc, BPlan
from bluesky_queueserver_api.zmq import REManagerAPI

from magscope_devices.sim.world import SimParams
from magscope_ipc.processes import port_holder
from magscope_session import resolve_tiled, session_metadata
from magscope_session._qserver import child_pids
from magscope_session._services import port_open

pytestmark = pytest.mark.system

MAGSCOPE = str(Path(sys.executable).with_name("magscope"))
PROFILE = Path(__file__).resolve().parents[1] / "src" / "magscope_session" / "profile"


def _stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, MAGSCOPE_DATA_DIR=str(data_dir), MAGSCOPE_SIM_SEED="4", **extra)
    for key in ("MAGSCOPE_TILED_URI", "MAGSCOPE_TILED_API_KEY"):
        if key not in extra:
            env.pop(key, None)
    return env


class Stack:
    """``magscope qserver`` running in a subprocess, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        if port_open("127.0.0.1:60615") or port_open("127.0.0.1:6379"):
            pytest.fail("a queueserver or Redis already runs on the default ports")
        self.data_dir = data_dir
        self.log = data_dir / "magscope-qserver.out"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [MAGSCOPE, "qserver", "--port", "0"], env=env, stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while "REManagerAPI() reaches it" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"magscope qserver did not start:\n{self.output()}")
            time.sleep(0.3)
        # the control socket is encrypted: export its public key as the command says
        key = re.search(r"export QSERVER_ZMQ_PUBLIC_KEY=(\S+)", self.output()).group(1)
        os.environ["QSERVER_ZMQ_PUBLIC_KEY"] = key
        self.killed = False
        self.api = REManagerAPI()  # the default addresses, as a user would

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def open_environment(self) -> None:
        if not self.api.status()["worker_environment_exists"]:
            self.api.environment_open()
            self.api.wait_for_idle(timeout=180)
        assert self.api.status()["worker_environment_exists"], self.output()

    def state(self) -> dict:
        task = self.api.function_execute(BFunc("instrument_state"), run_in_background=True)
        deadline = time.monotonic() + 30
        while True:
            result = self.api.task_result(task["task_uid"])
            if result["status"] == "completed":
                assert result["result"]["success"], result
                return result["result"]["return_value"]
            assert time.monotonic() < deadline, result
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if hasattr(self, "api"):
            self.api.close()


def _instrument_processes() -> set[int]:
    """Camera and tracking-worker processes of the default instance (the queue's).

    Their command lines name their shared-memory segments, ``magscope.default.*``; other
    tests' instruments (another xdist worker's) are not the queue's.
    """
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        child = b"magscope_devices._acquisition" in text or b"magscope_tracking._worker" in text
        if child and b"magscope.default." in text:
            found.add(int(cmdline.parent.name))
    return found


def _segments() -> set[str]:
    """The default instance's segments (other instances belong to other tests)."""
    return {p.name for p in Path("/dev/shm").glob("magscope.default.*")}


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("qserver")
    before = (_instrument_processes(), _segments())
    s = Stack(data_dir, _stack_env(data_dir))
    s.baseline = before
    yield s
    s.stop()
    os.environ.pop("QSERVER_ZMQ_PUBLIC_KEY", None)
    if s.killed:  # the last test killed it; it checks what is left itself
        return
    assert s.process.returncode == 0, s.output()
    # Ctrl-C closed the environment first: no instrument process or segment of ours is left
    _wait_until(lambda: _instrument_processes() <= before[0], 30, "instrument processes exit")
    assert _segments() <= before[1]
    assert not port_open("127.0.0.1:6379") and not port_open("127.0.0.1:60615")


def test_bad_plans_are_refused_at_submission_with_the_reason(stack):
    api = stack.api
    cases = [
        (BPlan("force_extension", "microscope", "2 pN"), "forces_pn"),
        (BPlan("force_clamp", "microscope", 4.0, "ten seconds"), "duration_s"),
        (BPlan("zlut_sweep", "no_such_microscope", -2000, 2000, 100), "no_such_microscope"),
        (BPlan("load_zlut", "microscope", "a run"), "not in the list of allowed plans"),
        (BPlan("with_safe_finish", "microscope"), "not in the list of allowed plans"),
    ]
    for plan, reason in cases:
        with pytest.raises(api.RequestFailedError, match=reason):
            api.item_add(plan)
    assert api.queue_get()["items"] == []


def test_queue_runs_a_zlut_sweep_and_a_force_extension_into_tiled(stack):
    api = stack.api
    stack.open_environment()
    api.queue_clear()
    plans = [
        BPlan("auto_select_beads", "microscope.tracker"),
        BPlan("find_reference_beads", "microscope.tracker"),
        BPlan("zlut_sweep", "microscope", -2000, 10000, 200, frames_per_step=2, magnet_z_mm=1.0,
              md={"sample": "queue test"}),
        BPlan("force_calibration", "microscope", [1.5, 3.0, 4.5], duration_s=3.0),
        BPlan("force_extension", "microscope", [2.0, 4.0, 8.0, 12.0], dwell_s=1.0,
              settle_s=0.3, md={"sample": "queue test"}),
    ]
    for plan in plans:
        api.item_add(plan)
    api.queue_start()
    api.wait_for_idle(timeout=400)
    history = api.history_get()["items"][-len(plans):]
    assert [h["result"]["exit_status"] for h in history] == ["completed"] * len(plans), [
        h["result"].get("msg") for h in history
    ]
    zlut_uid = history[2]["result"]["run_uids"][0]
    fe_uid = history[4]["result"]["run_uids"][0]
    client = resolve_tiled(stack.data_dir, start=False).client()
    _wait_until(
        lambda: fe_uid in client and "stop" in client[fe_uid].metadata, 60,
        "the whole force-extension run reaches Tiled",
    )
    zlut_run, fe_run = client[zlut_uid], client[fe_uid]
    assert zlut_run.metadata["start"]["plan_name"] == "zlut_sweep"
    assert zlut_run.metadata["start"]["sample"] == "queue test"
    # the same session metadata as a run from IPython (the same profile made both)
    assert set(session_metadata(sim_params=SimParams())) <= set(zlut_run.metadata["start"])
    assert zlut_run.metadata["start"]["instrument"] == "magscope-sim"
    profiles = zlut_run["zlut"]["zlut-profiles"].read()
    assert profiles.ndim == 4 and profiles.shape[1] >= 1  # (events, beads, planes, bins)
    contour = fe_run["wlc"]["wlc-contour_nm"].read()
    assert contour.shape[0] == 1 and ((contour > 1000) & (contour < 10000)).mean() > 0.8
    assert fe_run.metadata["stop"]["exit_status"] == "success"


def _setup_plans(frames_per_step: int = 1) -> list[BPlan]:
    """Beads, reference beads, an anchored Z-LUT and a force calibration, quickly."""
    return [
        BPlan("auto_select_beads", "microscope.tracker"),
        BPlan("find_reference_beads", "microscope.tracker"),
        BPlan("zlut_sweep", "microscope", -2000, 10000, 200, frames_per_step=frames_per_step,
              magnet_z_mm=1.0),
        BPlan("force_calibration", "microscope", [1.5, 3.0, 4.5], duration_s=2.0),
    ]


def _ensure_calibrated(stack) -> None:
    stack.open_environment()
    api = stack.api
    api.queue_clear()
    state = stack.state()
    # calibrated (force not NaN) and every bead with a height: a restored state may hold a
    # bead added after the sweep (the viewer-commands test adds one)
    if state["force_pn"] == state["force_pn"] and not state["beads_without_height"]:
        return
    api.item_add_batch(_setup_plans())
    api.queue_start()
    api.wait_for_idle(timeout=300)
    assert {h["result"]["exit_status"] for h in api.history_get()["items"][-4:]} == {"completed"}


def test_pause_resume_abort_and_stop_of_a_running_plan(stack):
    api = stack.api
    _ensure_calibrated(stack)
    clamp = BPlan("force_clamp", "microscope", 5.0, 6.0, settle_s=0.2)

    api.item_add(clamp)
    api.queue_start()
    _wait_until(lambda: api.status()["re_state"] == "running", 30, "the clamp runs")
    time.sleep(1.0)
    api.re_pause(option="immediate")
    api.wait_for_idle_or_paused(timeout=30)
    assert api.status()["re_state"] == "paused"
    api.re_resume()
    api.wait_for_idle(timeout=60)
    assert api.history_get()["items"][-1]["result"]["exit_status"] == "completed"

    # an aborted run with camera frames and tracks stays readable: every stream, every
    # field, from Tiled
    api.item_add(BPlan("count_at_heights", "microscope", [5.0], num=300, delay_s=0.02))
    api.queue_start()
    _wait_until(lambda: api.status()["re_state"] == "running", 30, "the count runs")
    time.sleep(2.0)
    api.re_pause(option="immediate")
    api.wait_for_idle_or_paused(timeout=30)
    api.re_abort()
    api.wait_for_idle(timeout=60)
    aborted = api.history_get()["items"][-1]["result"]
    assert aborted["exit_status"] == "aborted"
    client = resolve_tiled(stack.data_dir, start=False).client()
    uid = aborted["run_uids"][-1]
    _wait_until(lambda: uid in client and "stop" in client[uid].metadata, 60, "the stop doc")
    run = client[uid]
    assert run.metadata["stop"]["exit_status"] == "abort"
    read = _read_every_stream(run)
    assert read["primary"] > 0, read
    assert api.queue_get()["items"][0]["name"] == "count_at_heights"  # aborted plans go back
    api.queue_clear()
    state = stack.state()
    assert state["magnet_z_mm"] == pytest.approx(8.0) and state["magnet_turns"] == 0.0

    # stop: the running plan finishes, the next one stays in the queue
    api.item_add(BPlan("force_clamp", "microscope", 5.0, 2.0, settle_s=0.2))
    api.item_add(BPlan("force_clamp", "microscope", 5.0, 2.0, settle_s=0.2))
    api.queue_start()
    _wait_until(lambda: api.status()["re_state"] == "running", 30, "the clamp runs")
    api.queue_stop()
    api.wait_for_idle(timeout=60)
    assert api.history_get()["items"][-1]["result"]["exit_status"] == "completed"
    assert len(api.queue_get()["items"]) == 1
    api.queue_clear()


def test_viewer_commands_go_through_the_queue_and_are_refused_while_a_plan_runs(stack):
    from magscope_viewer import CommandClient

    stack.open_environment()
    api = stack.api
    client = CommandClient("default", timeout_s=30)  # `magscope qserver` announced the queue
    assert client.transport() == "queue"
    reply = client.send("add_bead", {"x_px": 200.0, "y_px": 150.0})
    assert reply.ok and reply.message == "added a bead at (200.0, 150.0) px", reply.message
    assert api.history_get()["items"][-1]["name"] == "add_bead"
    reply = client.send("move_axes", {"magnet_z_mm": 6.0})
    assert reply.ok and reply.message == "moved magnet_z_mm=6", reply.message
    assert stack.state()["magnet_z_mm"] == pytest.approx(6.0)
    reply = client.send("move_axes", {"magnet_z_mm": 5.0, "focus_nm": 1e7})
    assert not reply.ok and "move_axes: focus_nm=10000000.0 is outside the focus limits" in reply.message
    assert stack.state()["magnet_z_mm"] == pytest.approx(6.0)
    # the lock toggles: plans of the queue too; the focus lock says what it lacks
    reply = client.send("lock_xy")
    assert reply.ok and reply.message == "XY lock on", reply.message
    assert api.history_get()["items"][-1]["name"] == "lock_xy"
    reply = client.send("unlock_xy")
    assert reply.ok and reply.message == "XY lock off", reply.message
    reply = client.send("lock_focus")  # on if the session has reference beads and a Z-LUT
    if reply.ok:
        assert reply.message.startswith("focus lock on"), reply.message
        reply = client.send("unlock_focus")
        assert reply.ok and reply.message == "focus lock off", reply.message
    else:
        assert "lock_focus: no reference beads" in reply.message or (
            "lock_focus: no Z-LUT loaded" in reply.message), reply.message

    api.item_add(BPlan("count_at_heights", "microscope", [5.0], num=200, delay_s=0.05))
    api.queue_start()
    _wait_until(lambda: api.status()["re_state"] == "running", 30, "the count runs")
    reply = client.send("move_axes", {"magnet_z_mm": 4.0})
    assert (reply.ok, reply.message) == (False, "refused: a plan is running (count_at_heights)")
    api.re_pause(option="immediate")
    api.wait_for_idle_or_paused(timeout=30)
    api.re_abort()
    api.wait_for_idle(timeout=60)
    api.queue_clear()
    client.close()


def _read_every_stream(run) -> dict[str, int]:
    """Read every field of every stream of a run from Tiled; the rows read per stream."""
    rows = {}
    for name in run:
        stream = run[name]
        n = 0
        for key in stream:
            n = max(n, len(stream[key].read()))
        rows[name] = n
    return rows


def test_closing_the_environment_leaves_no_process_or_shared_memory(stack):
    stack.open_environment()
    api = stack.api
    assert _instrument_processes() - stack.baseline[0], "the worker runs a microscope"
    api.environment_close()
    api.wait_for_idle(timeout=60)
    assert not api.status()["worker_environment_exists"]
    _wait_until(
        lambda: not (_instrument_processes() - stack.baseline[0]), 30, "instrument processes exit"
    )
    _wait_until(lambda: _segments() <= stack.baseline[1], 30, "shared memory is freed")


def test_a_crashed_worker_is_reported_and_the_environment_reopens_safe(stack):
    api = stack.api
    stack.open_environment()
    api.queue_clear()
    _ensure_calibrated(stack)
    api.item_add(BPlan("force_clamp", "microscope", 5.0, 30.0, settle_s=0.2))
    api.queue_start()
    _wait_until(
        lambda: api.status()["running_item_uid"] is not None
        and (api.queue_get()["running_item"] or {}).get("name") == "force_clamp",
        300, "the clamp starts",
    )
    time.sleep(2.0)
    cameras = _instrument_processes() - stack.baseline[0]
    worker = _worker_pid()
    os.kill(worker, signal.SIGKILL)
    _wait_until(
        lambda: not api.status()["worker_environment_exists"], 60, "the manager notices"
    )
    assert api.status()["manager_state"] == "idle"
    _wait_until(lambda: "The RE worker process died" in stack.output(), 30, "it is reported")
    last = api.history_get()["items"][-1]
    assert last["name"] == "force_clamp" and last["result"]["exit_status"] == "failed"
    # the worker's own camera and tracking processes notice their parent is gone
    _wait_until(lambda: not (cameras & _instrument_processes()), 30, "orphans exit")
    api.queue_clear()  # the failed plan went back to the queue
    stack.open_environment()
    state = stack.state()
    assert state["magnet_z_mm"] == pytest.approx(8.0) and state["magnet_turns"] == 0.0
    # the instrument state the killed worker kept (beads, Z-LUT, calibration) is back
    assert state["force_pn"] == state["force_pn"] and state["bead_ids"], state
    assert not state["beads_without_height"], state
    # the dead worker's shared memory was removed when the new microscope started
    assert not [s for s in _segments() if f".{worker}-" in s]
    api.queue_clear()


def _worker_pid() -> int:
    """The RE worker: the parent of the running camera process."""
    for pid in _instrument_processes():
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"magscope_devices._acquisition" in b" ".join(cmd):
            return int(cmd[cmd.index(b"--parent") + 1])
    raise AssertionError("no camera process found")


def test_a_second_qserver_is_refused_and_disturbs_nothing(stack, tmp_path):
    stack.open_environment()
    before = stack.api.status()
    reports = stack.output().count("The RE worker process died")
    manager = port_holder("127.0.0.1", 60615)
    result = subprocess.run(
        [MAGSCOPE, "qserver", "--port", "0"], env=_stack_env(tmp_path / "second"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is taken by pid" in result.stderr and "magscope cleanup" in result.stderr
    assert "reusing" not in result.stdout
    # the first stack is untouched: same manager, environment still open, state unchanged
    assert port_holder("127.0.0.1", 60615) == manager
    after = stack.api.status()
    assert after["worker_environment_exists"] and after["manager_state"] == "idle"
    assert after["plan_history_uid"] == before["plan_history_uid"]
    time.sleep(2.0)  # the watch looks every 0.5 s
    assert stack.output().count("The RE worker process died") == reports


def test_services_are_private_by_default(stack):
    # every service listens on 127.0.0.1 only
    for port in (5577, 5578, 6379, 60615, 60625):
        listeners = [
            c.laddr.ip for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        assert listeners and set(listeners) == {"127.0.0.1"}, (port, listeners)
    # Redis in protected mode
    with socket.create_connection(("127.0.0.1", 6379), timeout=2) as sock:
        sock.sendall(b"CONFIG GET protected-mode\r\n")
        assert b"yes" in sock.recv(256)
    # the control socket is encrypted: a client without the key gets no answer
    key = os.environ.pop("QSERVER_ZMQ_PUBLIC_KEY")
    try:
        stranger = REManagerAPI(timeout_recv=1.0)
        with pytest.raises(stranger.RequestTimeoutError):
            stranger.status()
        stranger.close()
    finally:
        os.environ["QSERVER_ZMQ_PUBLIC_KEY"] = key
    # data files are the owner's only, and the Tiled key is in no log or output
    tiled_key = (stack.data_dir / "tiled-api-key").read_text().strip()
    files = [p for p in stack.data_dir.rglob("*") if p.is_file()]
    assert len(files) > 5
    loose = [str(p) for p in files if p.stat().st_mode & 0o077 and p.name != "magscope-qserver.out"]
    assert not loose
    for path in files:
        if path.suffix in (".log", ".out") or path.name.endswith(".log.1"):
            assert tiled_key not in path.read_text(errors="replace"), path


def test_a_missing_redis_is_a_clear_error_naming_the_fix(tmp_path):
    result = subprocess.run(
        [MAGSCOPE, "qserver", "--redis-addr", "127.0.0.1:6391", "--port", "0"],
        env=_stack_env(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "no Redis server at 127.0.0.1:6391" in result.stderr
    assert "magscope redis --port 6391" in result.stderr


def test_the_process_tree_helper_sees_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in child_pids(os.getpid())
    finally:
        child.kill()
        child.wait()


def _stack_processes(root_pid: int) -> dict[str, list[int]]:
    """The live descendants of a queueserver stack, by kind (psutil)."""
    kinds = {  # the launcher first: its command line names the program it runs
        "lifeline launcher": "lifeline.py", "redis-server": "redis-server",
        "start-re-manager": "start-re-manager", "0MQ proxy": "zmq_proxy",
        "camera": "magscope_devices._acquisition", "tracking worker": "magscope_tracking._worker",
        "tiled": "magscope_session._tiled_server",
    }
    found: dict[str, list[int]] = {k: [] for k in kinds}
    try:
        procs = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return found
    for proc in procs:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for kind, fragment in kinds.items():
            if fragment in cmd:
                found[kind].append(proc.pid)
                break
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            continue
    return alive


def test_kill_9_of_qserver_leaves_no_process_within_5_s(stack):
    """Last in the module: it kills the stack."""
    stack.open_environment()
    before = _stack_processes(stack.process.pid)
    assert before["camera"] and before["tracking worker"] and before["redis-server"], before
    print("processes before kill -9:", {k: len(v) for k, v in before.items()})
    stack.killed = True
    os.kill(stack.process.pid, signal.SIGKILL)
    t0 = time.monotonic()
    pids = [p for v in before.values() for p in v]
    while _alive(pids) and time.monotonic() - t0 < 5.0:
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    left = {k: len(_alive(v)) for k, v in before.items()}
    print(f"processes {elapsed:.1f} s after kill -9:", left)
    assert not _alive(pids), left
    for port in (5577, 5578, 6379, 60615, 60625):
        assert port_holder("127.0.0.1", port) is None, port
    # what the killed worker left in /dev/shm is stale; `magscope cleanup` removes it
    out = subprocess.run([MAGSCOPE, "cleanup"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "0 orphaned process(es)" in out.stdout, out.stdout
    assert _segments() <= stack.baseline[1]
