"""The data path when things go wrong, against one real embedded Tiled server:

- several processes writing runs at once (an IPython session beside the queue, a replay
  during a run, two instruments on one server);
- runs of the simulated microscope paused mid-trigger, then resumed or aborted, and a
  session killed (``kill -9``) mid-run, then replayed: every stream stays readable;
- the stop document of a failed run names the error; replay of an empty spool file and
  ``magscope tiled replay --port``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted
from ophyd_async.core import AsyncStatus, StandardReadable, init_devices, soft_signal_rw

from concurrent_writers import EVENTS, RUNS, WRITERS, check_runs, child_env, run_writers
from magscope_devices import make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_session import TiledTarget, make_run_engine, session_metadata, subscribe_tiled_writer
from magscope_session._cli import main as magscope_main
from magscope_session._document_writer import SpoolingTiledWriter
from magscope_session._replay import replay, replay_main
from magscope_session._spool import EMPTY_SUBDIR, SENT_SUBDIR, dumps_document, read_spool
from magscope_tracking.track_file import read_track_file
from process_helpers import wait_for_pid_exit

pytestmark = pytest.mark.system

# --------------------------------------------------------------------------- concurrency
def test_four_writer_processes_at_once_lose_nothing(tiled_server, tmp_path):
    uids, elapsed = run_writers(tiled_server.uri, tiled_server.api_key, tmp_path)
    assert tiled_server.running, f"the Tiled server died:\n{tiled_server.log_tail(40)}"
    check_runs(tiled_server.client(), uids)
    print(f"{WRITERS} writers x {RUNS} runs x {EVENTS} events in {elapsed:.1f} s")


# --------------------------------------------------------------------------- interruptions
PARAMS = SimParams(seed=7, n_tethered=3, n_reference=1, width_px=384, height_px=256)
SHOTS = 4


SHOTS_PLAN = textwrap.dedent(
    '''
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from bluesky import Msg

    def shots_plan(mic, n, *, on_shot=None, pause_before_save=None, md=None):
        """n shots of camera and tracker, one event each. Each shot triggers both, lets
        them acquire for 50 ms (on_shot(i) is called then, from the plan), then waits
        and reads them: a pause (or a kill) landing in those 50 ms interrupts both
        triggers after the camera wrote its frame and the tracker part of its window.
        Shot ``pause_before_save`` pauses between its reads and its save (bluesky has
        collected the shot's StreamDatums and drops them)."""
        dets = [mic.camera, mic.tracker]

        @bpp.stage_decorator(dets)
        @bpp.run_decorator(md={"sample": "interrupted", **(md or {})})
        def plan():
            for i in range(n):
                yield from bps.checkpoint()
                for det in dets:
                    yield from bps.trigger(det, group="shot")
                yield from bps.sleep(0.05)
                if on_shot is not None:
                    on_shot(i)
                yield from bps.wait(group="shot")
                yield from bps.create("primary")
                for det in dets:
                    yield from bps.read(det)
                if i == pause_before_save:
                    yield Msg("pause", defer=False)
                yield from bps.save()

        return plan()
    '''
)
_namespace: dict = {}
exec(SHOTS_PLAN, _namespace)  # the same plan here and in the killed session
shots_plan = _namespace["shots_plan"]


def read_every_stream(run) -> dict[str, dict[str, np.ndarray]]:
    """Every field of every stream of a run, read from Tiled one by one."""
    return {
        stream: {key: np.asarray(run[stream][key].read()) for key in run[stream]}
        for stream in run
    }


def check_run_streams(client, uid: str, mic_name: str, n_events: int) -> dict:
    """Read every stream of run ``uid``; check the frames and track rows served are the
    ones in the files, one frame and one window of rows per event, in order."""
    run = client[uid]
    data = read_every_stream(run)
    primary = data["primary"]
    cam, trk = f"{mic_name}-camera", f"{mic_name}-tracker"
    assert primary["seq_num"].tolist() == list(range(1, n_events + 1))
    frames = primary[cam]
    assert frames.shape[:2] == (n_events, 1)
    stamps = primary[f"{cam}-timestamp"]
    assert stamps.shape == (n_events,) and np.all(np.diff(stamps) > 0)
    x = primary[f"{trk}-x_nm"]  # (events, window, beads)
    assert x.shape[0] == n_events and x.shape[1] == 10
    # each event's window statistics come from the rows the event points at
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(
            np.nanmean(x, axis=1), primary[f"{trk}-x_nm_mean"], rtol=1e-12, atol=1e-9
        )
    index = primary[f"{trk}-frame_index"]  # (events, window)
    assert np.all(np.diff(index, axis=1) >= 1)
    return data


@pytest.fixture(scope="module")
def scope(tiled_server):
    """The simulated microscope in this process, writing to the module's Tiled server."""
    target = TiledTarget(
        uri=tiled_server.uri, api_key=tiled_server.api_key, source="embedded-running",
        data_dir=tiled_server.data_dir,
    )
    RE, _ = make_run_engine(session_metadata(sample="interrupted", sim_params=PARAMS),
                            best_effort=False)
    writer = subscribe_tiled_writer(RE, target)
    with init_devices():
        mic = make_simulated_microscope(
            PARAMS, data_dir=target.detector_data_dir, tracking_workers=1, name="mic",
        )
    try:
        RE(bps.mv(mic.magnet_z, 2.0))
        RE(bps.wait_for([mic.tracker.find_beads]))
        yield SimpleNamespace(RE=RE, mic=mic, writer=writer, server=tiled_server)
    finally:
        if RE.state != "idle":
            RE.abort("test teardown")
        mic.close()
        writer.close(timeout=60)


def file_of(docs, data_key: str) -> tuple[str, str]:
    (res,) = [d for n, d in docs if n == "stream_resource" and d["data_key"] == data_key]
    return urlparse(res["uri"]).path, res["parameters"]["dataset"]


def rows_in(path: str, dataset: str) -> int:
    with h5py.File(path, "r", swmr=True) as file:
        return int(file[dataset].shape[0])


def files_hold_the_events(client, uid: str, run_docs: list, n: int) -> None:
    """Run ``uid`` (``n`` shots) reads back from Tiled, and its camera and track files hold
    exactly the frames and rows its events describe, the same values Tiled serves."""
    data = check_run_streams(client, uid, "mic", n)
    path, dataset = file_of(run_docs, "mic-camera")
    assert rows_in(path, dataset) == n
    with h5py.File(path, "r", swmr=True) as file:
        np.testing.assert_array_equal(file[dataset][()], data["primary"]["mic-camera"][:, 0])
    path, dataset = file_of(run_docs, "mic-tracker-x_nm")
    tracks = read_track_file(path)
    assert tracks["x_nm"].shape[0] == n * 10
    np.testing.assert_array_equal(
        tracks["x_nm"].reshape(n, 10, -1), data["primary"]["mic-tracker-x_nm"]
    )


def pause_on_shot(RE, shot: int):
    """``on_shot`` for shots_plan: request an immediate pause during shot ``shot``'s
    triggers (once: the resumed plan replays the shot without calling us again)."""
    def on_shot(i):
        if i == shot:
            threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()
    return on_shot


def only_announced_frames_while_paused(mic) -> None:
    """The pause dropped the interrupted trigger's frame and cancelled its request: while
    paused, the file holds exactly the frames the StreamDatums announced."""
    ctl = mic.camera.process.control
    time.sleep(0.3)  # a frame of the interrupted trigger would have landed by now
    assert ctl["capture_written"] == ctl["capture_announced"] == ctl["capture_requested"]


def test_paused_mid_trigger_then_resumed_or_aborted_runs_read_back(scope):
    RE, mic = scope.RE, scope.mic
    docs: list = []
    token = RE.subscribe(lambda name, doc: docs.append((name, doc)))
    try:
        # pause while both detectors acquire shot 3, then resume: the run completes with
        # one frame and one window per event, the paused shot's data dropped
        with pytest.raises(RunEngineInterrupted):
            RE(shots_plan(mic, SHOTS, on_shot=pause_on_shot(RE, 2)))
        assert RE.state == "paused"
        only_announced_frames_while_paused(mic)
        RE.resume()
        uid_resumed = docs[0][1]["uid"]
        stop = [d for n, d in docs if n == "stop"][-1]
        assert stop["exit_status"] == "success", stop["reason"]
        assert stop["num_events"] == {"primary": SHOTS}
        resumed_docs, docs[:] = list(docs), []

        # pause during shot 1, then abort: the run ends with the shot before
        with pytest.raises(RunEngineInterrupted):
            RE(shots_plan(mic, SHOTS, on_shot=pause_on_shot(RE, 1)))
        only_announced_frames_while_paused(mic)
        RE.abort("test abort")
        uid_aborted = docs[0][1]["uid"]
        stop = [d for n, d in docs if n == "stop"][-1]
        assert stop["exit_status"] == "abort" and stop["num_events"] == {"primary": 1}
        aborted_docs = list(docs)
    finally:
        RE.unsubscribe(token)
    client = scope.server.client()  # each run is in Tiled when RE(...) returns
    for uid, run_docs, n in ((uid_resumed, resumed_docs, SHOTS), (uid_aborted, aborted_docs, 1)):
        files_hold_the_events(client, uid, run_docs, n)


def test_paused_between_read_and_save_then_resumed_or_aborted_runs_read_back(scope):
    """bluesky collects a shot's StreamDatums at its reads and drops them if a pause
    comes before the save: the files keep only the frames and rows of saved events."""
    RE, mic = scope.RE, scope.mic
    runs = []
    for then in ("resume", "abort"):
        docs: list = []
        token = RE.subscribe(lambda name, doc, docs=docs: docs.append((name, doc)))
        try:
            with pytest.raises(RunEngineInterrupted):
                RE(shots_plan(mic, SHOTS, pause_before_save=1))
            assert RE.state == "paused"
            if then == "resume":
                RE.resume()
            else:
                RE.abort("test abort")
        finally:
            RE.unsubscribe(token)
        stop = [d for n, d in docs if n == "stop"][-1]
        n = SHOTS if then == "resume" else 1
        assert stop["num_events"] == {"primary": n}, (then, stop)
        announced = [d["indices"] for name, d in docs if name == "stream_datum"
                     and d["stream_resource"] == [r["uid"] for m, r in docs if m ==
                     "stream_resource" and r["data_key"] == "mic-camera"][0]]
        # contiguous StreamDatums, one frame per event
        assert [(i["start"], i["stop"]) for i in announced] == [(k, k + 1) for k in range(n)]
        runs.append((docs[0][1]["uid"], docs, n))
    client = scope.server.client()
    for uid, run_docs, n in runs:
        files_hold_the_events(client, uid, run_docs, n)


# The session killed mid-run: builds the microscope, writes to Tiled through the session's
# spooling writer, runs shots_plan and, during shot 3's triggers, says so and blocks.
KILLED_SESSION = SHOTS_PLAN + textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from ophyd_async.core import init_devices
    from magscope_devices import make_simulated_microscope
    from magscope_devices.sim.world import SimParams
    from magscope_session import make_run_engine, session_metadata, subscribe_tiled_writer
    from magscope_session import TiledTarget

    uri, key, data_dir, detector_dir = sys.argv[1:5]
    params = SimParams(seed=7, n_tethered=3, n_reference=1, width_px=384, height_px=256)
    target = TiledTarget(uri=uri, api_key=key, source="env", data_dir=Path(data_dir))
    RE, _ = make_run_engine(session_metadata(sample="killed", sim_params=params),
                            best_effort=False)
    subscribe_tiled_writer(RE, target, batch_size=5)
    with init_devices():
        mic = make_simulated_microscope(params, data_dir=detector_dir, tracking_workers=1,
                                        name="mic")
    RE(bps.mv(mic.magnet_z, 2.0))
    RE(bps.wait_for([mic.tracker.find_beads]))

    def say(**kwargs):
        print(json.dumps(kwargs), flush=True)

    RE.subscribe(lambda name, doc: say(uid=doc["uid"]) if name == "start" else None)

    def on_shot(i):
        if i == 3:
            say(mid_shot=i, camera_pid=mic.camera.process.process.pid)
            time.sleep(60)  # killed here

    RE(shots_plan(mic, 100, on_shot=on_shot))
    """
)


def test_session_killed_mid_run_reads_back_after_replay(tiled_server, tmp_path):
    from magscope_devices._ownership import instance_from_env
    from magscope_ipc.shm import remove_stale_segments

    data_dir = tmp_path / "session"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SESSION, tiled_server.uri, tiled_server.api_key,
         str(data_dir), str(tiled_server.detector_data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )
    said: dict = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                said.update(json.loads(line))
            if "mid_shot" in said:
                break
        assert "mid_shot" in said, proc.communicate(timeout=30)[1][-3000:]
        proc.send_signal(signal.SIGKILL)  # mid-trigger of shot 3: kill -9
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    uid = said["uid"]
    # the camera process notices that its owner died, closes its file and exits
    assert wait_for_pid_exit(said["camera_pid"]), "the camera process outlived its owner"
    remove_stale_segments(instance_from_env())  # the killed session's instance

    spool = data_dir / "spool"
    docs = read_spool(spool / f"{uid}.jsonl")
    assert [d["seq_num"] for n, d in docs if n == "event"] == [1, 2, 3]
    cam_path, cam_dataset = file_of(docs, "mic-camera")
    assert rows_in(cam_path, cam_dataset) == 3  # the killed shot's frame is not kept
    trk_path, _ = file_of(docs, "mic-tracker-x_nm")
    tracks = read_track_file(trk_path)  # SWMR: readable though its writer was killed
    # every announced row is on disk (flushed before its StreamDatum); rows of the killed
    # window may follow, as far as they were flushed
    assert tracks["x_nm"].shape[0] >= 30

    summary = replay(spool, tiled_server.uri, tiled_server.api_key)
    assert summary.replayed == [uid] and summary.stop_added == [uid], summary
    assert summary.ok, summary
    if tracks["x_nm"].shape[0] > 30:  # Tiled is told to serve the announced rows only
        assert uid in summary.trimmed, summary
        assert "mic-tracker-x_nm" in " ".join(summary.trimmed[uid])
    assert (spool / SENT_SUBDIR / f"{uid}.jsonl").exists()

    client = tiled_server.client()
    assert client[uid].metadata["stop"]["exit_status"] == "fail"
    data = check_run_streams(client, uid, "mic", 3)
    np.testing.assert_array_equal(
        tracks["x_nm"][:30].reshape(3, 10, -1), data["primary"]["mic-tracker-x_nm"]
    )
    with h5py.File(cam_path, "r", swmr=True) as file:
        np.testing.assert_array_equal(file[cam_dataset][()], data["primary"]["mic-camera"][:, 0])


# --------------------------------------------------------------------------- small ones
class FailingTrigger(StandardReadable):
    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables():
            self.value = soft_signal_rw(float, 0.0)
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        raise RuntimeError(f"{self.name}: exposure 3.5 s is outside [1e-05, 1.0] s")


def test_stop_document_of_a_failed_run_names_the_error():
    RE, _ = make_run_engine(best_effort=False)
    with init_devices():
        det = FailingTrigger()
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    with pytest.raises(Exception, match="exposure 3.5 s"):
        RE(bp.count([det], num=2))
    stop = docs[-1][1]
    assert stop["exit_status"] == "fail"
    assert stop["reason"] == "RuntimeError: det: exposure 3.5 s is outside [1e-05, 1.0] s"
    # other reasons are left alone
    RE(bp.count([], num=1))
    assert docs[-1][1]["exit_status"] == "success" and docs[-1][1]["reason"] == ""


def test_empty_spool_file_is_reported_once(tiled_server, tmp_path, capsys):
    data_dir = tmp_path / "data"
    spool = data_dir / "spool"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    RE, _ = make_run_engine(best_effort=False)
    with init_devices():
        det = FailingTrigger()
    writer = SpoolingTiledWriter(dead, None, spool, check=False)  # spooled, not sent
    RE.subscribe(writer)
    (uid,) = RE(bp.count([det.value], num=2)).run_start_uids
    writer.close()
    (spool / "0b1e.jsonl").write_bytes(b"")  # the disk was full at the start document

    capsys.readouterr()
    assert replay_main(data_dir, uri=tiled_server.uri, api_key=tiled_server.api_key) == 0
    out = capsys.readouterr().out
    assert f"{uid}: replayed" in out
    assert "0b1e held no document" in out and "FAILED" not in out, out
    assert (spool / EMPTY_SUBDIR / "0b1e.jsonl").exists()
    assert tiled_server.client()[uid].metadata["stop"]["num_events"] == {"primary": 2}
    # reported once: the next replay has nothing to do
    assert replay_main(data_dir, uri=tiled_server.uri, api_key=tiled_server.api_key) == 0
    assert "Nothing to replay" in capsys.readouterr().out


def test_replay_command_uses_the_port_option(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MAGSCOPE_TILED_URI", raising=False)
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    (spool / "0000.jsonl").write_text(dumps_document("start", {"uid": "0000", "time": 1.0}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = magscope_main(
            ["tiled", "replay", "--data-dir", str(tmp_path / "data"), "--port", str(port)]
        )
    assert code == 2
    assert f"Port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert (spool / "0000.jsonl").exists()  # nothing was sent or moved


def test_data_dir_with_a_duckdb_table_store_stays_readable(tmp_path):
    """A data dir made before the SQLite table store: its tables.duckdb stays readable
    storage (its runs are served), new tables go to tables.sqlite. (Checked end to end by
    hand: a run written with the duckdb layout read back, and a new run written, through
    EmbeddedTiled on that data dir.)"""
    from magscope_session import EmbeddedTiled

    server = EmbeddedTiled(tmp_path, port=0)
    args = json.loads(server.write_config().read_text())["trees"][0]["args"]
    assert args["writable_storage"][1] == f"sqlite:///{tmp_path.as_posix()}/tables.sqlite"
    assert not any(s.startswith("duckdb:") for s in args["readable_storage"])
    (tmp_path / "tables.duckdb").write_bytes(b"")
    args = json.loads(server.write_config().read_text())["trees"][0]["args"]
    assert f"duckdb:///{tmp_path.as_posix()}/tables.duckdb" in args["readable_storage"]
    assert not any(s.startswith("duckdb:") for s in args["writable_storage"])
