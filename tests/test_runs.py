"""magscope_session.runs against a real Tiled server: runs written by real plans on the
simulated microscope through the session's TiledWriter, then found and read back."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pandas as pd
import pytest
from ophyd_async.core import init_devices
from ophyd_async.plan_stubs import ensure_connected

from magscope_devices import ForceCalibration, make_simulated_microscope
from magscope_devices.sim.world import SimParams
from magscope_plans import FIT_FIELDS, TrackRecorder, zlut_sweep
from magscope_plans._preflight import read_layout
from magscope_plans._results import ResultRecord, emit
from magscope_plans.analysis import subtract_drift
from magscope_session import connect, make_run_engine, session_metadata, subscribe_tiled_writer
from magscope_session._tiled_server import ENV_TILED_API_KEY, TiledTarget, TiledUnreachableError
from magscope_session.runs import (
    BeadNotInRunError,
    NoTracksError,
    bead_tracks,
    find_runs,
    force_calibration_of,
    run_summary,
    zlut_of,
)

pytestmark = pytest.mark.system

N_FRAMES = 100
FORCED_HEIGHTS_MM = (2.0, 3.0)  # the magnet heights of the calibrated record
FORCED_FRAMES = 40  # frames recorded at each
FRAME_S = 0.01  # the simulated camera runs at 100 frames/s


@pytest.fixture(scope="module")
def written(tiled_server, tmp_path_factory):
    """Five runs in Tiled: two counts, a Z-LUT sweep, a full-rate record, a force fit."""
    tag = uuid.uuid4().hex[:8]
    target = TiledTarget(
        uri=tiled_server.uri, api_key=tiled_server.api_key, source="embedded-running",
        data_dir=tiled_server.data_dir,
    )
    params = SimParams(seed=7, n_tethered=3, n_reference=1, width_px=384, height_px=256)
    RE, _ = make_run_engine(
        session_metadata(sample=f"default-{tag}", operator="carol", sim_params=params),
        best_effort=False,
    )
    writer = subscribe_tiled_writer(RE, target)
    with init_devices():
        mic = make_simulated_microscope(
            params, data_dir=target.detector_data_dir, tracking_workers=1,
            name="microscope",
        )
    try:
        RE(bps.mv(mic.magnet_z, 2.0))  # a few pN: tethered beads hold still within tens of nm
        RE(bps.wait_for([mic.tracker.find_beads]))
        rois = RE(bps.rd(mic.tracker.rois)).plan_result
        ids = np.asarray(rois.bead_id, np.int64)
        # each tracked bead id -> the simulator's bead (nearest ROI centre; 3 = reference)
        _, _, index = mic.camera.latest_frame()
        truth = mic.truth.frame(index)
        centres = np.stack([rois.x0_px + 32, rois.y0_px + 32], axis=1) * params.nm_per_px
        dist = np.hypot(
            centres[:, None, 0] - truth["x_nm"][None, :], centres[:, None, 1] - truth["y_nm"][None, :]
        )
        sim_of = {int(b): int(np.argmin(dist[i])) for i, b in enumerate(ids)}
        assert np.all(dist.min(axis=1) < 500.0) and sorted(sim_of.values()) == [0, 1, 2, 3]
        ref_id = next(b for b, s in sim_of.items() if s == 3)
        tethered = sorted(b for b in sim_of if b != ref_id)

        uid_a = RE(bp.count([mic.tracker], num=2, md={
            "sample": f"lambda-{tag}", "operator": "alice", "bead_ids": tethered[:2],
        })).plan_result
        uid_b = RE(bp.count([mic.focus], num=1, md={
            "sample": f"hairpin-{tag}", "operator": "bob", "bead_ids": [tethered[2]],
        })).plan_result
        uid_z = RE(zlut_sweep(
            mic, -1000, 1000, 200, frames_per_step=3, magnet_z_mm=2.0,
            reference_beads=[ref_id], md={"sample": f"lambda-{tag}"},
        )).plan_result
        RE(bps.mv(mic.magnet_z, 2.0))  # the sweep ends at a safe height (8 mm)

        recorder = TrackRecorder(mic.tracker, chunk_frames=50)
        recorded: list[dict[str, np.ndarray]] = []

        @bpp.stage_decorator([mic])
        @bpp.run_decorator(md={
            "plan_name": "record_tracks", "sample": f"lambda-{tag}",
            "bead_ids": tethered, "reference_bead_ids": [ref_id],
        })
        def record():
            recorded.append((yield from recorder.record(N_FRAMES)))

        uid_t = RE(record()).plan_result
        frames = recorded[0]["frame_index"]
        truth_rows = np.stack([mic.truth.frame(int(i)) for i in frames])  # (frames, sim beads)

        cal = ForceCalibration(
            f0_pn=80.0, a=0.7, l1_mm=0.9, l2_mm=2.5, min_height_mm=0.5, max_height_mm=4.0,
            bead_ids=tuple(tethered), bead_scale=(1.1, 0.9, 1.0), created=time.time(),
            bead_scale_err=(0.02, 0.03, 0.02), bead_radius_nm=(1390.0, 1420.0, 1405.0),
            bead_radius_nm_err=(12.0, 15.0, 11.0), reference_radius_nm=1405.0,
            reference_radius_nm_err=9.0,
            covariance=tuple(tuple(float(v) for v in row) for row in np.diag([4.0, 1e-3, 1e-3, 4e-3])),
        )
        # a record with the force calibrated: the export's force column has values
        cal_path = cal.save(tmp_path_factory.mktemp("calibration") / "force.json")
        RE(bps.mv(mic.force.calibration_file, str(cal_path)))
        forced_recorder = TrackRecorder(mic.tracker, chunk_frames=20)

        @bpp.stage_decorator([mic])
        @bpp.run_decorator(md={
            "plan_name": "force_record", "sample": f"forced-{tag}", "bead_ids": tethered,
            "reference_bead_ids": [ref_id],
        })
        def forced():
            for height in FORCED_HEIGHTS_MM:
                yield from bps.mv(mic.magnet_z, height)
                yield from bps.trigger_and_read([mic.force, mic.magnet_z], name="axes")
                # settle: a camera loop running late delivers queued frames exposed up to
                # 10 periods (100 ms) before they arrive, before the reading's timestamp
                yield from bps.sleep(0.3)
                yield from forced_recorder.record(FORCED_FRAMES)

        uid_p = RE(forced()).plan_result
        RE(bps.mv(mic.force.calibration_file, ""))
        fit = ResultRecord(FIT_FIELDS, name="force_fit")
        layout = RE(read_layout(mic.tracker)).plan_result.select(tethered)

        @bpp.run_decorator(md={
            "plan_name": "force_calibration", "sample": f"hairpin-{tag}",
            "plan_args": {"magnet_heights_mm": [4.0, 2.0, 0.5]},
            "bead_ids": tethered, "reference_bead_ids": [ref_id],
        })
        def force_fit():
            yield from ensure_connected(fit)
            yield from bps.mv(*fit.layout_moves(layout))
            yield from emit(
                fit, "force_fit", f0_pn=cal.f0_pn, f0_pn_err=1.0, a=cal.a, a_err=0.01,
                l1_mm=cal.l1_mm, l1_mm_err=0.01, l2_mm=cal.l2_mm, l2_mm_err=0.01,
                rms_relative_residual=0.02, min_height_mm=cal.min_height_mm,
                max_height_mm=cal.max_height_mm, bead_id=np.array(tethered),
                bead_scale=np.array(cal.bead_scale), created=cal.created,
                bead_scale_err=np.array(cal.bead_scale_err),
                covariance=np.asarray(cal.covariance).reshape(-1),
                bead_radius_nm=np.array(cal.bead_radius_nm),
                bead_radius_nm_err=np.array(cal.bead_radius_nm_err),
                reference_radius_nm=cal.reference_radius_nm,
                reference_radius_nm_err=cal.reference_radius_nm_err,
                radius_pattern_scatter_nm=float("nan"),
            )

        uid_f = RE(force_fit()).plan_result
    finally:
        mic.close()
        assert writer.close(timeout=60)
    client = tiled_server.client()
    return SimpleNamespace(
        tag=tag, client=client, server=tiled_server, ids=ids, sim_of=sim_of, ref_id=ref_id,
        tethered=tethered, a=uid_a, b=uid_b, z=uid_z, t=uid_t, f=uid_f, p=uid_p,
        recorded=recorded[0], truth=truth_rows, cal=cal,
        start_time={u: client[u].metadata["start"]["time"] for u in (uid_a, uid_b, uid_z, uid_t, uid_f)},
    )


MAGSCOPE = str(Path(sys.executable).with_name("magscope"))


def uids(found) -> list[str]:
    return [run.metadata["start"]["uid"] for run in found]


def test_find_runs_by_metadata_bead_and_date(written):
    w, client = written, written.client
    mine = find_runs(client, sample=f"lambda-{w.tag}")
    assert uids(mine) == [w.t, w.z, w.a]  # newest first
    assert uids(find_runs(client, sample=f"hairpin-{w.tag}")) == [w.f, w.b]
    assert uids(find_runs(client, plan_name="zlut_sweep")) == [w.z]
    assert uids(find_runs(client, plan_name="count", operator="bob")) == [w.b]
    assert uids(find_runs(client, sample=f"lambda-{w.tag}", limit=1)) == [w.t]
    # bead ids: start.bead_ids (counts, records, force fit) or start.zlut_bead_ids (sweep)
    first, last = w.tethered[0], w.tethered[2]
    assert uids(find_runs(client, bead_id=first)) == [w.f, w.p, w.t, w.z, w.a]
    assert uids(find_runs(client, bead_id=last)) == [w.f, w.p, w.t, w.z, w.b]
    assert uids(find_runs(client, bead_id=w.ref_id)) == [w.z]  # only the sweep measured it
    assert find_runs(client, bead_id=999) == []
    # dates: UNIX times, datetimes, 'YYYY-MM-DD' strings (local time)
    t = w.start_time
    assert uids(find_runs(client, since=t[w.z], until=t[w.t])) == [w.t, w.z]
    # (a datetime has microsecond resolution: fromtimestamp(t) may round past t)
    assert uids(find_runs(client, since=dt.datetime.fromtimestamp(t[w.t] - 1e-3))) == [w.f, w.p, w.t]
    day = dt.date.fromtimestamp(t[w.a])
    last_day = dt.date.fromtimestamp(t[w.f])  # the same day unless run across midnight
    everything = [w.f, w.p, w.t, w.z, w.b, w.a]
    assert uids(find_runs(client)) == everything  # this module's server holds only these
    assert uids(find_runs(client, since=day.isoformat(), until=last_day.isoformat())) == everything
    assert uids(find_runs(client, since=day, until=last_day)) == everything
    assert find_runs(client, until=(day - dt.timedelta(days=1)).isoformat()) == []
    assert uids(find_runs(client, sample=f"lambda-{w.tag}", since=day.isoformat())) == uids(mine)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        find_runs(client, since="14/03/2025")
    # a URI with the key from the environment, or given
    assert uids(find_runs(w.server.uri, plan_name="zlut_sweep", api_key=w.server.api_key)) == [w.z]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_TILED_API_KEY, w.server.api_key)
        assert uids(find_runs(w.server.uri, plan_name="zlut_sweep")) == [w.z]
    assert uids(find_runs(w.server, plan_name="zlut_sweep")) == [w.z]  # an EmbeddedTiled
    with pytest.raises(TypeError, match="catalog"):
        find_runs(client[w.a])


@pytest.mark.timeout(30)  # a hang guard; the client's own retries would take minutes
def test_unreachable_uri_fails_fast_naming_it():
    dead = "http://127.0.0.1:9"
    with pytest.raises(TiledUnreachableError, match="127.0.0.1:9"):
        find_runs(dead, sample="x")
    with pytest.raises(TiledUnreachableError, match="127.0.0.1:9"):
        connect(dead + "/api/v1/metadata/sub", api_key="abc")


def test_wrong_key_is_reported(written):
    with pytest.raises(TiledUnreachableError, match="rejected the API key"):
        find_runs(written.server.uri, api_key="wrongkey")


def test_run_summary(written):
    w = written
    summary = run_summary(w.client[w.t])
    assert summary["uid"] == w.t and summary["plan"] == "record_tracks"
    assert summary["sample"] == f"lambda-{w.tag}" and summary["operator"] == "carol"
    assert summary["streams"] == ["tracks"] and summary["bead_ids"] == w.tethered
    assert summary["reference_bead_ids"] == [w.ref_id]
    assert summary["exit_status"] == "success" and summary["num_events"] == {"tracks": 2}
    assert dt.datetime.fromisoformat(summary["time"]).timestamp() == pytest.approx(
        w.start_time[w.t], abs=1.0
    )
    count = run_summary(w.client[w.a])
    assert count["plan"] == "count" and count["bead_ids"] == w.tethered[:2]
    sweep = run_summary(w.client[w.z])
    assert sweep["bead_ids"] == w.ids.tolist() and set(sweep["streams"]) == {"primary", "zlut"}


def test_bead_tracks_every_frame_close_to_the_truth(written):
    w = written
    run = w.client[w.t]
    for bead in w.ids.tolist():
        df = bead_tracks(run, bead)
        assert isinstance(df, pd.DataFrame)
        assert list(df.columns) == ["time_s", "frame_index", "x_nm", "y_nm", "z_nm"]
        assert len(df) == N_FRAMES and df.attrs["stream"] == "tracks"
        # the columns' beads: the tracker's bead layout in the stream's configuration
        assert df.attrs["layout"].bead_ids.tolist() == w.ids.tolist()
        assert df.attrs["layout"].roi_size_px == 64
        np.testing.assert_array_equal(df["frame_index"], w.recorded["frame_index"])
        col = w.ids.tolist().index(bead)
        np.testing.assert_array_equal(df["x_nm"], w.recorded["x_nm"][:, col])
        np.testing.assert_array_equal(df["z_nm"], w.recorded["z_nm"][:, col])
        # time: s since the first frame, in steps of one frame period (two or more where
        # the camera fell behind and skipped a slot)
        steps = np.diff(df["time_s"].to_numpy())
        assert df["time_s"].iloc[0] == 0.0
        assert np.all(steps > 0) and np.median(steps) == pytest.approx(FRAME_S, abs=1e-4)
        np.testing.assert_allclose(steps / FRAME_S, np.round(steps / FRAME_S), atol=0.01)
        ok = np.isfinite(df["x_nm"].to_numpy())
        assert ok.mean() > 0.9
        sim = w.sim_of[bead]
        for axis in ("x_nm", "y_nm"):
            err = df[axis].to_numpy()[ok] - w.truth[axis][ok, sim]
            assert np.sqrt(np.mean(err**2)) < 5.0, (bead, axis, err)
    # a count of the tracker: the primary stream, windows of 10 frames per event
    counted = bead_tracks(w.client[w.a], w.tethered[0])
    assert len(counted) == 20 and counted.attrs["stream"] == "primary"
    assert counted.attrs["layout"].bead_ids.tolist() == w.ids.tolist()
    assert np.all(np.diff(counted["frame_index"]) >= 1)


def test_every_per_bead_stream_carries_its_bead_layout(written):
    # bead ids, ROI origins, ROI size, nm/px and the Z-LUT's run uid: in the configuration
    w = written
    tracks = w.client[w.t]["tracks"].metadata["configuration"]["microscope-tracker"]["data"]
    assert list(tracks["microscope-tracker-bead_ids"]) == w.ids.tolist()
    assert tracks["microscope-tracker-zlut_uid"] == w.z  # the sweep's Z-LUT gave z
    assert tracks["microscope-tracker-roi_size_px"] == 64
    assert tracks["microscope-tracker-nm_per_px"] == 100.0
    assert len(tracks["microscope-tracker-roi_x0_px"]) == w.ids.size
    sweep = w.client[w.z]
    for stream, device in (("primary", "zlut_images"), ("zlut", "zlut")):
        data = sweep[stream].metadata["configuration"][device]["data"]
        assert list(data[f"{device}-bead_ids"]) == w.ids.tolist()
        assert data[f"{device}-roi_size_px"] == 64


def test_drift_correction(written):
    w = written
    run = w.client[w.t]
    bead = w.tethered[0]
    raw = bead_tracks(run, bead)
    ref = bead_tracks(run, w.ref_id)
    corrected = bead_tracks(run, bead, drift_correct=True)
    assert corrected.attrs["reference_beads"] == [w.ref_id]
    assert not np.allclose(corrected["x_nm"], raw["x_nm"], equal_nan=True)
    for axis in ("x_nm", "y_nm"):
        expected = subtract_drift(raw[axis].to_numpy(), ref[axis].to_numpy())
        np.testing.assert_allclose(corrected[axis], expected, equal_nan=True)
    # z: height above the reference bead, frame by frame (the sweep loaded a Z-LUT)
    assert np.isfinite(raw["z_nm"]).mean() > 0.5
    np.testing.assert_allclose(corrected["z_nm"], raw["z_nm"] - ref["z_nm"], equal_nan=True)
    np.testing.assert_array_equal(corrected["time_s"], raw["time_s"])
    # explicit reference beads win over the start document's
    other = bead_tracks(run, bead, drift_correct=True, reference_beads=[w.tethered[1]])
    assert other.attrs["reference_beads"] == [w.tethered[1]]
    assert not np.allclose(other["x_nm"], corrected["x_nm"], equal_nan=True)
    with pytest.raises(ValueError, match="no reference bead other than"):
        bead_tracks(run, w.ref_id, drift_correct=True)
    with pytest.raises(ValueError, match="only used with drift_correct=True"):
        bead_tracks(run, bead, reference_beads=[w.ref_id])


def test_clear_errors(written):
    w = written
    with pytest.raises(BeadNotInRunError) as info:
        bead_tracks(w.client[w.t], 999)
    message = str(info.value)
    assert "bead 999" in message and w.t in message and str(w.ids.tolist()) in message
    with pytest.raises(BeadNotInRunError, match="reference beads \\[998\\]"):
        bead_tracks(w.client[w.t], w.tethered[0], drift_correct=True, reference_beads=[998])
    with pytest.raises(NoTracksError, match="no full-rate bead tracks"):
        bead_tracks(w.client[w.b], w.tethered[2])
    with pytest.raises(NoTracksError, match="no stream 'nope'"):
        bead_tracks(w.client[w.t], w.tethered[0], stream="nope")
    with pytest.raises(ValueError, match="holds no Z-LUT"):
        zlut_of(w.client[w.a])
    with pytest.raises(ValueError, match="holds no force calibration"):
        force_calibration_of(w.client[w.t])


def test_zlut_of_reads_the_run(written):
    w = written
    run = w.client[w.z]
    lut = zlut_of(run)
    assert lut.source == w.z and lut.bead_ids.tolist() == w.ids.tolist()
    assert lut.roi_size == (64, 64) and lut.nm_per_px == 100.0
    rebuilt = zlut_of(run, from_images=True)  # from the ROI images of every step
    np.testing.assert_allclose(rebuilt.profiles, lut.profiles, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(rebuilt.z_nm, lut.z_nm)
    np.testing.assert_array_equal(rebuilt.bead_ids, lut.bead_ids)
    assert rebuilt.roi_size == lut.roi_size and rebuilt.bin_px == lut.bin_px
    assert rebuilt.nm_per_px == lut.nm_per_px and rebuilt.created == lut.created


def test_force_calibration_of_reads_the_run(written):
    w = written
    cal = force_calibration_of(w.client[w.f])
    assert cal.to_dict() == {**w.cal.to_dict(), "source": w.f}


def test_export_writes_every_frame_and_bead_to_csv_and_parquet(written, tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from magscope_session.runs import export, read_tracks

    w = written
    run = w.client[w.t]
    tracks = read_tracks(run)
    n_frames, n_beads = tracks.x_nm.shape
    refs = run.metadata["start"]["reference_bead_ids"]
    for suffix, read in ((".csv", pacsv.read_csv), (".parquet", pq.read_table)):
        path = tmp_path / f"tracks{suffix}"
        done = export(run, path)
        assert (done.rows, done.frames, done.beads) == (n_frames * n_beads, n_frames, n_beads)
        assert (path.stat().st_mode & 0o777) == 0o600 == (done.sidecar.stat().st_mode & 0o777)
        table = read(path).to_pydict()
        assert list(table) == ["time_s", "unix_time_s", "frame_index", "bead_id", "x_nm",
                               "y_nm", "z_nm", "extension_nm", "force_pn", "magnet_z_mm"]
        got = {k: np.asarray(v, dtype=float) for k, v in table.items()}
        # frame-major: row f * beads + b is frame f, bead b, read independently of export
        np.testing.assert_array_equal(got["frame_index"].reshape(n_frames, n_beads)[:, 0],
                                      tracks.frame_index)
        np.testing.assert_array_equal(got["bead_id"][:n_beads], tracks.layout.bead_ids)
        atol = 0.0005 if suffix == ".csv" else 0.0  # a CSV keeps 1 pm, Parquet every bit
        for axis in ("x_nm", "y_nm", "z_nm"):
            np.testing.assert_allclose(got[axis].reshape(n_frames, n_beads),
                                       getattr(tracks, axis), rtol=0, atol=atol, equal_nan=True)
        ids = tracks.layout.bead_ids.tolist()
        cols = [ids.index(b) for b in refs]
        bead = ids.index(w.tethered[0])
        ext = got["extension_nm"].reshape(n_frames, n_beads)
        np.testing.assert_allclose(
            ext[:, bead], tracks.z_nm[:, bead] - np.nanmean(tracks.z_nm[:, cols], axis=1),
            rtol=0, atol=atol + 1e-9, equal_nan=True,
        )
        assert np.isnan(ext[:, cols]).all()  # a reference bead has no extension
        assert got["time_s"][0] == 0.0
        np.testing.assert_allclose(got["unix_time_s"][::n_beads], tracks.timestamp)
        meta = json.loads(done.sidecar.read_text())
        assert meta["run"]["uid"] == w.t and meta["run"]["sample"] == f"lambda-{w.tag}"
        assert meta["columns"]["force_pn"] == "pN" and meta["reference_beads"] == refs
        assert meta["bead_layout"]["bead_ids"] == ids
        if suffix == ".parquet":
            assert json.loads(pq.read_schema(path).metadata[b"magscope"]) == meta
        # an existing file is kept unless asked
        before = path.read_bytes()
        with pytest.raises(FileExistsError, match="overwrite"):
            export(run, path)
        assert path.read_bytes() == before
    with pytest.raises(ValueError, match=r"use a .csv or .parquet path"):
        export(run, tmp_path / "tracks.xlsx")


def test_export_gives_the_force_and_magnet_height_of_every_frame(written, tmp_path):
    """A record at two magnet heights with a calibration loaded: every frame's force is
    the calibration's force at the height the magnet stood at (computed here from the
    curve's parameters), not NaN."""
    import pyarrow.parquet as pq

    from magscope_session.runs import export

    w = written
    run = w.client[w.p]
    done = export(run, tmp_path / "forced.parquet")
    table = pq.read_table(tmp_path / "forced.parquet").to_pydict()
    frames = done.frames
    assert frames == FORCED_FRAMES * len(FORCED_HEIGHTS_MM)
    force = np.asarray(table["force_pn"], float).reshape(frames, done.beads)
    magnet = np.asarray(table["magnet_z_mm"], float).reshape(frames, done.beads)
    assert (force == force[:, :1]).all()  # the microscope's one force, on every bead's row
    c = w.cal
    for k, height in enumerate(FORCED_HEIGHTS_MM):
        rows = slice(k * FORCED_FRAMES, (k + 1) * FORCED_FRAMES)
        expected = c.f0_pn * (c.a * np.exp(-height / c.l1_mm)
                              + (1 - c.a) * np.exp(-height / c.l2_mm))
        np.testing.assert_allclose(force[rows], expected, rtol=1e-6)
        np.testing.assert_allclose(magnet[rows], height, atol=1e-6)
    assert json.loads(done.sidecar.read_text())["force_source"] == "microscope-force"


def test_magscope_export_command(written, tmp_path):
    w = written
    env = dict(os.environ, MAGSCOPE_TILED_URI=w.server.uri,
               MAGSCOPE_TILED_API_KEY=w.server.api_key)
    out = tmp_path / "run.parquet"
    done = subprocess.run([MAGSCOPE, "export", w.t, str(out)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("wrote ") and str(out) in done.stdout
    assert out.exists() and out.with_name("run.parquet.json").exists()
    missing = subprocess.run([MAGSCOPE, "export", "no-such-uid", str(tmp_path / "x.csv")],
                             capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 2 and "no run 'no-such-uid'" in missing.stderr
    assert not (tmp_path / "x.csv").exists()
