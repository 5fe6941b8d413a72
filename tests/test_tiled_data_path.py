"""The data path against real Tiled servers: event tables, detector HDF5, metadata search,
a server that dies mid-run (spool and replay), unreachable servers, persistence."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd_async.core import (
    Array1D,
    StandardReadable,
    StaticPathProvider,
    UUIDFilenameProvider,
    init_devices,
    soft_signal_rw,
)
from ophyd_async.sim import SimBlobDetector
from tiled.queries import In, Key

from magscope_session._document_writer import SpoolingTiledWriter
from magscope_session._replay import replay, replay_main
from magscope_session._spool import (
    SENT_SUBDIR,
    dumps_document,
    loads_document,
    read_spool,
    try_lock,
)
from magscope_session._tiled_server import (
    ENV_TILED_API_KEY,
    ENV_TILED_URI,
    EmbeddedTiled,
    TiledServerError,
    TiledUnreachableError,
    check_reachable,
    resolve_tiled,
)
from process_helpers import free_port, wait_for_pid_exit

pytestmark = pytest.mark.system

# Every array signal in events: (name, dtype, shape of one reading).
ARRAY_SIGNALS = {
    "vec_f64": (np.float64, (5,)),  # small: would go to the SQL table with TiledWriter defaults
    "vec_i32": (np.int32, (40,)),
    "img_u16": (np.uint16, (3, 4)),  # small 2-D: aborts the run with TiledWriter defaults
    "img_f64": (np.float64, (6, 7)),
}


class ArrayDevice(StandardReadable):
    """Scalars and 1-D / 2-D arrays of several dtypes, all soft signals."""

    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables():
            self.force = soft_signal_rw(float, 0.0, units="pN")
            self.count = soft_signal_rw(int, 0)
            self.vec_f64 = soft_signal_rw(Array1D[np.float64], np.zeros(5))
            self.vec_i32 = soft_signal_rw(Array1D[np.int32], np.zeros(40, dtype=np.int32))
            self.img_u16 = soft_signal_rw(np.ndarray, np.zeros((3, 4), dtype=np.uint16))
            self.img_f64 = soft_signal_rw(np.ndarray, np.zeros((6, 7)))
        super().__init__(name=name)


def values_for(i: int) -> dict[str, object]:
    """Distinct values of every ArrayDevice signal for shot ``i``."""
    out: dict[str, object] = {"force": 0.5 * i + 0.25, "count": 7 * i - 3}
    for key, (dtype, shape) in ARRAY_SIGNALS.items():
        size = int(np.prod(shape))
        base = np.arange(size).reshape(shape) + 100 * i
        out[key] = (base * 1.5 if np.dtype(dtype).kind == "f" else base).astype(dtype)
    return out


def set_values(dev: ArrayDevice, i: int):
    for key, value in values_for(i).items():
        yield from bps.mv(getattr(dev, key), value)


@pytest.fixture
def run_engine():
    engine = RunEngine({})
    yield engine
    if engine.state != "idle":
        engine.halt()


class DocumentList(list):
    """RunEngine subscriber keeping every (name, doc)."""

    __hash__ = object.__hash__  # the RunEngine's callback registry hashes callbacks

    def __call__(self, name, doc):
        self.append((name, doc))

    def of(self, name):
        return [doc for n, doc in self if n == name]


def event_values(docs: DocumentList, key: str) -> np.ndarray:
    return np.stack([np.asarray(doc["data"][key]) for doc in docs.of("event")])


def per_shot_with_values(dev: ArrayDevice, counter: list[int]):
    def per_shot(detectors):
        yield from set_values(dev, counter[0])
        counter[0] += 1
        yield from bps.trigger_and_read(detectors)

    return per_shot


# --------------------------------------------------------------------------- encoding
def test_spool_encoding_round_trips_numpy_dtype_and_shape():
    doc = {
        "data": {
            "a": np.arange(12, dtype=np.uint16).reshape(3, 4),
            "b": np.float32(1.5),
            "c": np.int32(-7),
            "d": np.array(["x", "yz"]),
            "e": 2.5,
            "f": [1, 2],
        }
    }
    name, back = loads_document(dumps_document("event", doc))
    assert name == "event"
    assert back["data"]["a"].dtype == np.uint16 and back["data"]["a"].shape == (3, 4)
    np.testing.assert_array_equal(back["data"]["a"], doc["data"]["a"])
    assert back["data"]["b"].dtype == np.float32 and back["data"]["b"] == np.float32(1.5)
    assert back["data"]["c"].dtype == np.int32 and back["data"]["c"] == -7
    np.testing.assert_array_equal(back["data"]["d"], doc["data"]["d"])
    assert back["data"]["e"] == 2.5 and back["data"]["f"] == [1, 2]


def test_read_spool_drops_only_a_truncated_last_line(tmp_path):
    good = [dumps_document("start", {"uid": "u1"}), dumps_document("stop", {"uid": "u2"})]
    path = tmp_path / "u1.jsonl"
    path.write_text(good[0] + "\n" + good[1] + "\n" + good[1][:15])  # crash mid-write
    assert [n for n, _ in read_spool(path)] == ["start", "stop"]
    path.write_text(good[0] + "\n" + good[1][:15] + "\n" + good[1] + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_spool(path)


# --------------------------------------------------------------------------- (1) events
def test_event_table_with_array_signals_round_trips(tiled_server, run_engine):
    docs = DocumentList()
    with init_devices():
        dev = ArrayDevice()
    writer = SpoolingTiledWriter(tiled_server.client(), None, tiled_server.spool_dir)
    run_engine.subscribe(writer)
    run_engine.subscribe(docs)
    num = 4
    (uid,) = run_engine(
        bp.count([dev], num=num, per_shot=per_shot_with_values(dev, [0])), sample="arrays"
    )
    assert writer.close(timeout=60)

    run = tiled_server.client()[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    stream = run["primary"]
    for key in ("force", "count", *ARRAY_SIGNALS):
        field = f"{dev.name}-{key}"
        expected = event_values(docs, field)
        got = stream[field].read()
        assert got.shape == (num, *np.shape(values_for(0)[key])), field
        np.testing.assert_array_equal(got, expected, err_msg=field)
        if key in ARRAY_SIGNALS:
            assert got.dtype == ARRAY_SIGNALS[key][0], field
    # The whole stream as an xarray Dataset keeps dtypes too (max_array_size=0).
    dataset = stream.read()
    for key, (dtype, shape) in ARRAY_SIGNALS.items():
        variable = dataset[f"{dev.name}-{key}"]
        assert variable.dtype == dtype and variable.shape == (num, *shape), key
    np.testing.assert_array_equal(dataset[f"{dev.name}-force"], [0.25, 0.75, 1.25, 1.75])

    # The spool of a completely written run is in sent/ and holds every document.
    assert not (tiled_server.spool_dir / f"{uid}.jsonl").exists()
    spooled = read_spool(tiled_server.spool_dir / SENT_SUBDIR / f"{uid}.jsonl")
    assert [n for n, _ in spooled] == [n for n, _ in docs]
    np.testing.assert_array_equal(
        np.stack([d["data"][f"{dev.name}-img_u16"] for n, d in spooled if n == "event"]),
        event_values(docs, f"{dev.name}-img_u16"),
    )


# --------------------------------------------------------------------------- (2) frames
def test_detector_frames_in_hdf5_are_served_as_arrays(tiled_server, run_engine):
    docs = DocumentList()
    provider = StaticPathProvider(UUIDFilenameProvider(), tiled_server.detector_data_dir)
    with init_devices():
        cam = SimBlobDetector(provider)
    writer = SpoolingTiledWriter(tiled_server.uri, tiled_server.api_key, tiled_server.spool_dir)
    run_engine.subscribe(writer)
    run_engine.subscribe(docs)
    (uid,) = run_engine(bp.count([cam], num=3))
    assert writer.close(timeout=60)

    (resource,) = [d for d in docs.of("stream_resource") if d["data_key"] == cam.name]
    path = urlparse(resource["uri"]).path
    assert os.path.dirname(path) == str(tiled_server.detector_data_dir)
    with h5py.File(path, "r") as file:
        on_disk = file[resource["parameters"]["dataset"]][()]

    frames = tiled_server.client()[uid]["primary"][cam.name].read()
    assert frames.dtype == np.uint8
    assert frames.shape == (3, 1, 240, 320)  # (events, frames per event, rows, columns)
    np.testing.assert_array_equal(frames.reshape(on_disk.shape), on_disk)
    assert frames.max() > 0
    sums = tiled_server.client()[uid]["primary"][f"{cam.name}-sum"].read()
    np.testing.assert_array_equal(sums, on_disk.reshape(3, -1).sum(axis=1, dtype=np.int64))


# --------------------------------------------------------------------------- (3) search
def test_metadata_queries_find_runs(tiled_server, run_engine):
    tag = uuid.uuid4().hex[:8]
    with init_devices():
        dev = ArrayDevice()
    writer = SpoolingTiledWriter(tiled_server.client(), None, tiled_server.spool_dir)
    run_engine.subscribe(writer)
    uid_a = run_engine(bp.count([dev], num=1), sample=f"lambda-{tag}", operator="alice")[0]
    uid_b = run_engine(bp.count([dev], num=1), sample=f"hairpin-{tag}", operator="bob")[0]
    uid_c = run_engine(
        bp.list_scan([dev], dev.force, [1.0, 2.0]), sample=f"lambda-{tag}", operator="bob"
    )[0]
    assert writer.close(timeout=60)

    runs = tiled_server.client()
    lambda_runs = runs.search(Key("start.sample") == f"lambda-{tag}")
    assert set(lambda_runs) == {uid_a, uid_c}
    assert set(lambda_runs.search(Key("start.plan_name") == "list_scan")) == {uid_c}
    assert set(lambda_runs.search(Key("start.operator") == "alice")) == {uid_a}
    bob = runs.search(Key("start.operator") == "bob").search(
        In("start.sample", [f"lambda-{tag}", f"hairpin-{tag}"])
    )
    assert set(bob) == {uid_b, uid_c}
    # Metadata lives under "start"; the catalog is databroker's catalog of runs, which
    # searches the start document for a bare key (a plain Tiled container finds nothing).
    assert set(runs.search(Key("sample") == f"lambda-{tag}")) == {uid_a, uid_c}


# --------------------------------------------------------------------------- (4) crash
def test_server_killed_mid_run_nothing_lost_after_replay(
    tiled_server, run_engine, tmp_path, monkeypatch, caplog, capsys
):
    # The tiled client retries a failed request for about 25 s (TILED_RETRY_ATTEMPTS=10);
    # only the writer's worker waits, but the test would too: allow 2 attempts.
    monkeypatch.setattr("tiled.client.utils.TILED_RETRY_ATTEMPTS", 2)
    server = tiled_server  # killed and restarted (same port) below
    spool_dir = tmp_path / "data" / "spool"  # this test's runs only
    num, kill_after = 8, 2
    docs = DocumentList()
    provider = StaticPathProvider(UUIDFilenameProvider(), server.detector_data_dir)
    with init_devices():
        dev = ArrayDevice()
        cam = SimBlobDetector(provider)
    writer = SpoolingTiledWriter(server.uri, server.api_key, spool_dir, batch_size=1)
    run_engine.subscribe(writer)
    run_engine.subscribe(docs)

    @bpp.stage_decorator([cam])
    @bpp.run_decorator(md={"sample": "crash-test"})
    def plan():
        for i in range(num):
            yield from set_values(dev, i)
            yield from bps.trigger_and_read([dev, cam])
            if i == kill_after:
                # Everything so far is in Tiled; then the server dies (SIGKILL).
                assert writer.flush(timeout=30)
                server.kill()
            yield from bps.sleep(0.05)

    try:
        with caplog.at_level(logging.WARNING, logger="magscope_session._document_writer"):
            (uid,) = run_engine(plan())
            assert writer.flush(timeout=30)
    finally:
        server.start()  # same port again (port=0 is sticky); later tests use this server
    assert docs.of("stop")[0]["exit_status"] == "success"
    assert docs.of("stop")[0]["num_events"] == {"primary": num}
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]  # just one
    assert "failed on the" in warning.getMessage() and uid in warning.getMessage()
    assert "magscope tiled replay" in warning.getMessage()

    # Every document is on disk, unsent.
    spool_file = spool_dir / f"{uid}.jsonl"
    spooled = read_spool(spool_file)
    assert [n for n, _ in spooled] == [n for n, _ in docs]

    partial = server.client()[uid]
    assert partial.metadata.get("stop") is None
    assert 0 < len(partial["primary"][f"{dev.name}-force"].read()) < num

    # A spool file still locked by a live writer is left alone.
    with open(spool_file, "a") as held:
        assert try_lock(held)
        busy = replay(spool_dir, server.uri, server.api_key)
        assert busy.skipped_in_use == [uid] and busy.replayed == [] and spool_file.exists()

    summary = replay(spool_dir, server.uri, server.api_key)
    assert summary.replayed == [uid] and summary.partial_deleted == [uid], summary
    assert summary.documents == len(docs) and summary.ok
    assert not spool_file.exists()
    assert (spool_dir / SENT_SUBDIR / spool_file.name).exists()

    run = server.client()[uid]
    assert run.metadata["stop"]["num_events"] == {"primary": num}
    stream = run["primary"]
    for key in ("force", "count", *ARRAY_SIGNALS):
        field = f"{dev.name}-{key}"
        np.testing.assert_array_equal(stream[field].read(), event_values(docs, field))
    np.testing.assert_array_equal(stream["seq_num"].read(), np.arange(1, num + 1))
    frames = stream[cam.name].read()
    assert frames.shape == (num, 1, 240, 320)
    (resource,) = [d for d in docs.of("stream_resource") if d["data_key"] == cam.name]
    with h5py.File(urlparse(resource["uri"]).path, "r") as file:
        on_disk = file[resource["parameters"]["dataset"]][()]
    np.testing.assert_array_equal(frames.reshape(on_disk.shape), on_disk)

    # Idempotent: nothing left to do; a run already complete is only filed as sent.
    assert replay(spool_dir, server.uri, server.api_key).replayed == []
    shutil.copy(spool_dir / SENT_SUBDIR / spool_file.name, spool_file)
    capsys.readouterr()
    assert replay_main(tmp_path / "data", uri=server.uri, api_key=server.api_key) == 0
    assert f"{uid}: already complete in Tiled" in capsys.readouterr().out
    assert not spool_file.exists()
    assert len(server.client().search(Key("start.sample") == "crash-test")) == 1

    # The live writer recovers: the next run goes straight to the restarted server.
    (uid2,) = run_engine(bp.count([dev], num=2))
    assert writer.close(timeout=60)
    assert server.client()[uid2].metadata["stop"]["num_events"] == {"primary": 2}
    assert (spool_dir / SENT_SUBDIR / f"{uid2}.jsonl").exists()


# --------------------------------------------------------------------------- (5) unreachable
def test_unreachable_server_gives_clear_error(tiled_server, tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TiledUnreachableError) as info:
        check_reachable(dead, "abc", timeout=2)
    message = str(info.value)
    assert dead in message and "magscope tiled" in message and ENV_TILED_URI in message

    with pytest.raises(TiledUnreachableError, match="rejected the API key"):
        check_reachable(tiled_server.uri, "wrongkey", timeout=5)

    # An external server named by the environment: checked, never replaced by an
    # embedded one.
    monkeypatch.setenv(ENV_TILED_URI, dead)
    monkeypatch.setenv(ENV_TILED_API_KEY, "abc")
    with pytest.raises(TiledUnreachableError, match=dead):
        resolve_tiled(tmp_path / "data")
    assert not (tmp_path / "data" / "tiled-config.yml").exists()
    with pytest.raises(TiledUnreachableError, match=dead):
        SpoolingTiledWriter(dead, "abc", tmp_path / "spool")
    monkeypatch.setenv(ENV_TILED_URI, tiled_server.uri)
    monkeypatch.setenv(ENV_TILED_API_KEY, tiled_server.api_key)
    with resolve_tiled(tmp_path / "data") as target:
        assert target.source == "env" and target.server is None
        assert target.uri == tiled_server.uri

    # A port in use is reported before any process is started.
    busy = EmbeddedTiled(tmp_path / "other", port=tiled_server.port)
    with pytest.raises(TiledServerError, match=f"Port {tiled_server.port} .* is in use"):
        busy.start()
    assert not busy.running

    # The replay command reports the unreachable server instead of a traceback.
    monkeypatch.setenv(ENV_TILED_URI, dead)
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    (spool / "0000.jsonl").write_text(dumps_document("start", {"uid": "0000", "time": 1.0}))
    assert replay_main(tmp_path / "data") == 2


# --------------------------------------------------------------------------- (6) restart
def test_catalog_and_files_persist_across_restart(tiled_server, run_engine):
    docs = DocumentList()
    with init_devices():
        dev = ArrayDevice()
    writer = SpoolingTiledWriter(tiled_server.uri, tiled_server.api_key, tiled_server.spool_dir)
    run_engine.subscribe(writer)
    run_engine.subscribe(docs)
    (uid,) = run_engine(
        bp.count([dev], num=3, per_shot=per_shot_with_values(dev, [5])), sample="persist"
    )
    assert writer.close(timeout=60)

    pid = tiled_server.pid
    tiled_server.stop()
    tiled_server.stop()  # idempotent
    assert wait_for_pid_exit(pid), "the Tiled server process outlived stop()"
    assert not tiled_server.state_path.exists()
    with pytest.raises(TiledUnreachableError):
        check_reachable(tiled_server.uri, tiled_server.api_key, timeout=2)

    # The key is stored in the data dir: a new EmbeddedTiled of the same dir reuses it.
    assert EmbeddedTiled(tiled_server.data_dir).api_key == tiled_server.api_key
    tiled_server.start()
    # A session of the same data dir attaches to the running server instead of starting one.
    with resolve_tiled(tiled_server.data_dir, environ={}) as target:
        assert target.source == "embedded-running" and target.uri == tiled_server.uri
        assert target.server is None
    run = tiled_server.client().search(Key("start.sample") == "persist")[uid]
    field = f"{dev.name}-img_f64"
    np.testing.assert_array_equal(run["primary"][field].read(), event_values(docs, field))
    assert run.metadata["stop"]["exit_status"] == "success"
