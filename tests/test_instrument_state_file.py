"""The instrument state file: written owner-only and atomically, checked when read; a
corrupt or newer file is refused with the reason (fast tier: no microscope)."""

from __future__ import annotations

import stat

import pytest
import yaml

from magscope_session._instrument_state import (
    STATE_VERSION,
    InstrumentStateError,
    InstrumentStateKeeper,
    parse_instrument_state,
    read_state_file,
    state_path,
    write_state_file,
)

STATE = {
    "camera": {"exposure_s": 0.002, "frame_rate_hz": 100.0, "gain": 1.0,
               "roi_x": 0, "roi_y": 0, "roi_width": 512, "roi_height": 384},
    "tracking": {"roi_size_px": 64, "window_frames": 10, "bead_radius_nm": 1400.0},
    "focus_lock": {"rate_hz": 2.0, "kp": 0.5, "ki": 0.1, "max_step_nm": 200.0,
                   "target_nm": None, "was_enabled": False},
    "beads": {"rois": [{"bead_id": 0, "x0_px": 10, "y0_px": 20},
                       {"bead_id": 3, "x0_px": 100, "y0_px": 120}], "reference": [3]},
    "video": {"every_n": 10, "pre_trigger_s": 2.0, "min_free_mb": 100.0,
              "codec": "bitshuffle-lz4", "mode": "roi_crops"},
    "zlut_run": "4f1c0e2a-0000-4000-8000-000000000001",
    "force_calibration_run": None,
}


def test_written_owner_only_and_read_back(tmp_path):
    path = write_state_file(state_path(tmp_path, "scope1"), STATE)
    assert path == tmp_path / "state" / "instrument-scope1.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    back = read_state_file(path)
    assert back["version"] == STATE_VERSION and "saved" in back
    assert {k: back[k] for k in STATE} == STATE
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(version=STATE_VERSION + 1), r"newer MagScope-Bluesky \(state version 3"),
        (lambda s: s["video"].update(mode="movie"), r"video.mode is 'movie'; expected one of tracks, roi_crops"),
        (lambda s: s["video"].update(every_n=2.5), r"video.every_n is 2.5; expected a whole number"),
        (lambda s: s.update(version="one"), r"'version' is 'one'; expected a whole number"),
        (lambda s: s["tracking"].update(roi_size_px=64.5), r"tracking.roi_size_px is 64.5"),
        (lambda s: s["camera"].update(exposure_s=float("nan")), r"camera.exposure_s is nan"),
        (lambda s: s["camera"].update(shutter=1), r"unknown setting\(s\) camera.\['shutter'\]"),
        (lambda s: s.update(lenses={}), r"unknown section\(s\) \['lenses'\]"),
        (lambda s: s["beads"].update(reference=[7]), r"names bead\(s\) \[7\] that have no ROI"),
        (lambda s: s["beads"]["rois"].append({"bead_id": 0, "x0_px": 1, "y0_px": 1}),
         "bead_id 0 appears twice"),
        (lambda s: s["beads"]["rois"].append({"bead_id": 9, "x0_px": -1, "y0_px": 1}),
         r"beads.rois\[2\] is"),
        (lambda s: s.update(zlut_run=12), "zlut_run is 12; expected a Tiled run uid"),
    ],
)
def test_a_bad_state_is_refused_naming_key_value_and_limit(edit, message):
    state = yaml.safe_load(yaml.safe_dump({"version": STATE_VERSION, **STATE}))
    edit(state)
    with pytest.raises(InstrumentStateError, match=message):
        parse_instrument_state(yaml.safe_dump(state), source="s.yaml")


def test_the_video_words_are_the_recorder_s():
    from magscope_devices import VideoMode
    from magscope_devices._video_file import CODECS
    from magscope_session._instrument_state import _WORDS

    assert _WORDS["mode"] == tuple(m.value for m in VideoMode)
    assert set(_WORDS["codec"]) == set(CODECS)


def test_a_version_1_file_without_video_is_read():
    state = {k: v for k, v in STATE.items() if k != "video"}
    back = parse_instrument_state(yaml.safe_dump({"version": 1, **state}), source="old.yaml")
    assert "video" not in back and back["camera"] == STATE["camera"]


def test_corrupt_yaml_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("version: 1\nbeads: [unclosed\n")
    with pytest.raises(InstrumentStateError, match=r"s.yaml is not valid YAML"):
        read_state_file(path)
    with pytest.raises(InstrumentStateError, match="cannot read the state file"):
        read_state_file(tmp_path / "missing.yaml")


def test_the_keeper_saves_on_change_only_and_at_stop(tmp_path):
    state = {"version": STATE_VERSION, **yaml.safe_load(yaml.safe_dump(STATE))}
    path = tmp_path / "state" / "i.yaml"
    keeper = InstrumentStateKeeper(lambda: state, path, interval_s=10)
    assert keeper.save_if_changed() and keeper.saves == 1
    assert not keeper.save_if_changed()  # nothing changed: not written again
    state["tracking"]["window_frames"] = 25
    keeper.stop()  # stop saves what changed since
    assert keeper.saves == 2
    assert read_state_file(path)["tracking"]["window_frames"] == 25
    with pytest.raises(ValueError, match="interval_s must be 0.05-3600 s, got 0"):
        InstrumentStateKeeper(lambda: state, path, interval_s=0)


def test_magscope_state_show_export_import(tmp_path, monkeypatch, capsys):
    from magscope_session._cli import main

    monkeypatch.setenv("MAGSCOPE_INSTANCE", "clistate")
    data = ["--data-dir", str(tmp_path / "data")]
    assert main(["state", "show", *data]) == 0
    assert "no state saved yet for instance 'clistate'" in capsys.readouterr().out
    assert main(["state", "export", str(tmp_path / "out.yaml"), *data]) == 2
    assert "no state file at" in capsys.readouterr().err

    mine = tmp_path / "mine.yaml"
    write_state_file(mine, STATE)
    assert main(["state", "import", str(mine), *data]) == 0
    saved = state_path(tmp_path / "data", "clistate")
    assert read_state_file(saved)["beads"] == STATE["beads"]
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    capsys.readouterr()
    assert main(["state", "show", *data]) == 0
    assert "2 beads (1 reference), Z-LUT of run 4f1c0e2a, no force calibration" in (
        capsys.readouterr().out)

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 9\n")
    before = saved.read_text()
    assert main(["state", "import", str(bad), *data]) == 2
    assert "state version 9" in capsys.readouterr().err
    assert saved.read_text() == before  # refused: the state is left as it was

    out = tmp_path / "out.yaml"
    assert main(["state", "export", str(out), *data]) == 0
    assert out.read_text() == before
    assert main(["state", "export", str(out), *data]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(["state", "import", str(mine), *data]) == 0
    assert (saved.parent / (saved.name + ".previous")).read_text() == before
