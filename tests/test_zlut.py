"""Z-LUT: Z accuracy against the simulator's ground truth, multi-bead LUTs, range,
save/load round trip and validation errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from magscope_tracking import (
    ZLUT,
    TrackOptions,
    TrackStatus,
    ZLUTFormatError,
    ZLUTMismatchError,
    build_zlut,
    locate_xy,
    track,
)
from magscope_tracking.zlut import FORMAT_VERSION, PROFILE_METHOD
from tracking_sim import render_rois, sweep

Z_RMS_NM = 5.0  # target: Z error at most 5 nm r.m.s. over +-3.5 um of defocus


@pytest.fixture(scope="module")
def lut():
    """Z-LUT from a simulated focus sweep: -4..+4 um at 50 nm steps, 5 images per step."""
    images, z = sweep(-4000.0, 4000.0, 50.0, 5, seed=31)
    return build_zlut(images, z, nm_per_px=100.0, source="sweep-uid-1")


@pytest.fixture(scope="module")
def test_beads():
    rng = np.random.default_rng(32)
    dz = rng.uniform(-3500.0, 3500.0, 800)
    stack, xy = render_rois(dz, seed=32)
    return stack, xy, dz


# ------------------------------------------------------------------------------ accuracy


def test_z_error_within_target_over_defocus_range(lut, test_beads):
    stack, xy, dz = test_beads
    res = track(stack, lut)
    assert np.all(res.status == TrackStatus.OK)
    err = res.z_nm - dz
    assert np.sqrt(np.mean(err**2)) < Z_RMS_NM, np.sqrt(np.mean(err**2))
    assert abs(err.mean()) < 1.0
    # every 1 um slice of the range, not only the average
    for lo in np.arange(-3500.0, 3500.0, 1000.0):
        part = (dz >= lo) & (dz < lo + 1000.0)
        assert np.sqrt(np.mean(err[part] ** 2)) < 1.5 * Z_RMS_NM, lo
    assert np.all(res.score == res.z_score) and np.all(res.z_score > 0.99)
    xy_err = np.column_stack([res.x_px, res.y_px]) - xy
    assert np.sqrt(np.mean(xy_err**2)) < 0.010


def test_sub_plane_interpolation_has_no_plane_locking(lut):
    """Noise-free beads between two LUT planes: z follows the truth, not the planes."""
    dz = np.linspace(1000.0, 1100.0, 21)
    stack, _ = render_rois(dz, np.zeros((21, 2)) + [0.21, -0.33], noise=False)
    res = track(stack, lut)
    err = res.z_nm - dz
    assert np.ptp(err) < 4.0, err  # a bead moving by 5 nm steps is seen moving by 5 nm
    assert np.all(np.diff(res.z_nm) > 0)


def test_build_averages_repeated_heights():
    images, z = sweep(-1000.0, 1000.0, 100.0, 3, seed=33)
    lut = build_zlut(images, z, nm_per_px=100.0, smooth_planes=0, created=123.0)
    assert lut.n_planes == 21 and lut.created == 123.0 and lut.source is None
    per_image = locate_xy(images, profiles=True, bins=lut.bins).profiles
    np.testing.assert_allclose(lut.profiles[0], per_image.reshape(21, 3, -1).mean(axis=1))
    assert lut.roi_size == (64, 64) and lut.nm_per_px == 100.0
    with pytest.raises(ValueError, match="no usable image at z"):
        bad = images.copy()
        bad[3:6] = 125  # all three images of one height are blank
        build_zlut(bad, z, nm_per_px=100.0)


def test_beyond_lut_range_gives_nan_z_but_keeps_xy():
    images, z = sweep(-2000.0, 2000.0, 50.0, 2, seed=34)
    short = build_zlut(images, z, nm_per_px=100.0)
    stack, xy = render_rois(np.array([3500.0, -3000.0, 1500.0]), seed=35)
    res = track(stack, short)
    assert res.status.tolist() == [TrackStatus.Z_OUT_OF_RANGE] * 2 + [TrackStatus.OK]
    assert np.isnan(res.z_nm[:2]).all() and abs(res.z_nm[2] - 1500.0) < 20.0
    assert not res.lost.any() and np.abs(res.x_px - xy[:, 0]).max() < 0.05


# ------------------------------------------------------------------------------ multi-bead


def test_multi_bead_lut_picks_each_rois_bead():
    """Two beads of different size: each ROI must be matched against its own bead."""
    z = np.repeat(np.arange(-2500.0, 2501.0, 50.0), 3)
    small, _ = render_rois(z, np.array([0.1, 0.2]), seed=36, radius_nm=1300.0)
    large, _ = render_rois(z, np.array([-0.3, 0.1]), seed=37, radius_nm=1600.0)
    both = build_zlut(np.stack([small, large]), z, nm_per_px=100.0, bead_ids=[7, 3])
    stacked = ZLUT.stack([
        build_zlut(small, z, nm_per_px=100.0, bead_ids=[7]),
        build_zlut(large, z, nm_per_px=100.0, bead_ids=[3]),
    ])
    np.testing.assert_allclose(both.profiles, stacked.profiles)
    assert both.bead_ids.tolist() == [7, 3] and both.index_of([3, 7, 3]).tolist() == [1, 0, 1]
    rng = np.random.default_rng(38)
    dz = rng.uniform(-2000.0, 2000.0, 120)
    radius = np.where(np.arange(120) % 2 == 0, 1300.0, 1600.0)
    stack, _ = render_rois(dz, seed=38, radius_nm=radius)
    ids = np.where(np.arange(120) % 2 == 0, 7, 3)
    right = track(stack, both, bead_index=both.index_of(ids))
    wrong = track(stack, both, bead_index=both.index_of(np.where(ids == 7, 3, 7)))
    rms_right = np.sqrt(np.nanmean((right.z_nm - dz) ** 2))
    rms_wrong = np.sqrt(np.nanmean((wrong.z_nm - dz) ** 2))
    assert rms_right < Z_RMS_NM < 3 * Z_RMS_NM < rms_wrong
    assert np.median(right.z_score) > np.median(wrong.z_score)
    only = both.select([3])
    assert only.bead_ids.tolist() == [3] and np.array_equal(only.profiles[0], both.profiles[1])
    with pytest.raises(ValueError, match="bead_index"):
        track(stack, both)  # two beads: which one serves each ROI must be given
    with pytest.raises(ZLUTMismatchError, match=r"bead_index \[2\] out of range"):
        track(stack[:1], both, bead_index=[2])
    with pytest.raises(ZLUTMismatchError, match=r"bead ids \[5\] are not in the Z-LUT"):
        both.index_of([5])


def test_stack_refuses_different_planes(lut):
    other = build_zlut(*sweep(-1000.0, 1000.0, 100.0, 1, seed=39), nm_per_px=100.0)
    with pytest.raises(ZLUTMismatchError, match="planes differ"):
        ZLUT.stack([lut, other])


# ------------------------------------------------------------------------------ files


def test_save_load_round_trip(lut, test_beads, tmp_path):
    path = lut.save(tmp_path / "bead0.zlut.npz")
    back = ZLUT.load(path)
    np.testing.assert_array_equal(back.z_nm, lut.z_nm)
    np.testing.assert_array_equal(back.profiles, lut.profiles)
    np.testing.assert_array_equal(back.bead_ids, lut.bead_ids)
    assert (back.roi_size, back.bin_px, back.nm_per_px, back.created, back.source) == (
        lut.roi_size, lut.bin_px, lut.nm_per_px, lut.created, lut.source)
    assert abs(back.created - time.time()) < 3600
    stack = test_beads[0][:50]
    np.testing.assert_array_equal(track(stack, back).z_nm, track(stack, lut).z_nm)
    assert not back.profiles.flags.writeable  # value object
    path2 = back._replace(source=None).save(tmp_path / "no-source")  # any file name
    assert ZLUT.load(path2).source is None


def _rewrite(path, **changes):
    """Re-save a LUT file with some arrays, or header keys (meta__key), changed."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    for key, value in changes.items():
        if key.startswith("meta__"):
            meta[key[6:]] = value
        elif value is None:
            del arrays[key]
        else:
            arrays[key] = value
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_malformed_files_are_clear_errors(lut, tmp_path):
    good = lut.save(tmp_path / "good.npz")
    raw = good.read_bytes()
    cases = {
        "not an npz": (b"this is not a zip file", "not a readable Z-LUT file"),
        "truncated": (raw[: len(raw) // 2], "not a readable Z-LUT file"),
    }
    for name, (content, message) in cases.items():
        p = tmp_path / f"{name}.npz"
        p.write_bytes(content)
        with pytest.raises(ZLUTFormatError, match=message):
            ZLUT.load(p)
    edits = [
        (dict(meta__version=FORMAT_VERSION + 1),
         rf"unsupported Z-LUT format version {FORMAT_VERSION + 1} .*reads versions 1, 2"),
        (dict(meta__focal_shift=2.5), r"focal_shift 2.5 is outside 0.3 to 1.5"),
        (dict(meta__format="something-else"), "format 'something-else', expected 'magscope-zlut'"),
        (dict(profiles=None), "missing profiles"),
        (dict(z_nm=lut.z_nm[::-1].copy()), "strictly increasing"),
        (dict(profiles=lut.profiles[:, :-1]), r"profiles must be \(n_beads, n_planes=161"),
        (dict(profiles=np.where(np.arange(lut.n_bins) == 5, np.nan, lut.profiles)), "NaN"),
        (dict(bead_ids=np.array([1, 2])), "bead_ids must be 1 integers"),
        (dict(meta__roi_size=[20, 20]), "does not fit an ROI of 20 x 20"),
        (dict(meta__nm_per_px=-1.0), "nm_per_px must be positive"),
        (dict(meta__created="yesterday"), "malformed Z-LUT"),
    ]
    for k, (change, message) in enumerate(edits):
        p = tmp_path / f"edit{k}.npz"
        p.write_bytes(raw)
        _rewrite(p, **change)
        with pytest.raises(ZLUTFormatError, match=message):
            ZLUT.load(p)
    p = tmp_path / "method.npz"
    p.write_bytes(raw)
    _rewrite(p, meta__profile_method="bin-average-v0")
    with pytest.raises(ZLUTMismatchError, match=f"does not match this library's '{PROFILE_METHOD}'"):
        ZLUT.load(p)
    for exc in (ZLUTFormatError, ZLUTMismatchError):
        assert issubclass(exc, ValueError)


def test_mismatch_with_the_stack_is_a_clear_error(lut):
    stack60, _ = render_rois(np.array([0.0]), roi=60)
    with pytest.raises(ZLUTMismatchError, match=r"ROI size 60 x 60 px of the stack does not "
                                                 r"match the Z-LUT's ROI size 64 x 64 px"):
        track(stack60, lut)
    stack64 = np.full((1, 64, 64), 125, np.uint8)
    with pytest.raises(ZLUTMismatchError, match=r"bin_px 0.5 px of the options does not match "
                                                 r"the Z-LUT's 0.25 px"):
        track(stack64, lut, options=TrackOptions(bin_px=0.5))
    with pytest.raises(ZLUTMismatchError, match=r"radius_px 15 px .* Z-LUT.s 17.75 px \(72 bins"):
        track(stack64, lut, options=TrackOptions(radius_px=15.0))
    with pytest.raises(TypeError):
        track(stack64, "lut.npz")
    # matching options are fine
    track(stack64, lut, options=TrackOptions(bin_px=0.25, radius_px=17.75))


# ------------------------------------------------------------------------------ focal shift


def test_a_sweep_in_focus_travel_gives_heights_in_the_sample(test_beads, tmp_path):
    """The objective moved by ``travel``; the focal plane by 0.8 of it (the images' true
    defocus): a LUT built with the factor tracks the true heights, one built with a wrong
    factor is off by its ratio until rescaled."""
    images, dz = sweep(-3000.0, 3000.0, 50.0, 3, seed=36)
    travel = dz / 0.8
    right = build_zlut(images, travel, nm_per_px=100.0, focal_shift=0.8)
    assert right.focal_shift == 0.8
    np.testing.assert_allclose(right.z_nm, np.unique(dz), atol=1e-9)
    stack, _, true_dz = test_beads
    inside = np.abs(true_dz) < 2900.0
    z = track(stack[inside], right).z_nm
    assert np.sqrt(np.mean((z - true_dz[inside]) ** 2)) < Z_RMS_NM
    wrong = build_zlut(images, travel, nm_per_px=100.0, focal_shift=0.88)
    z_wrong = track(stack[inside], wrong).z_nm
    np.testing.assert_allclose(np.median(z_wrong / true_dz[inside]), 0.88 / 0.8, rtol=0.01)
    fixed = wrong.with_focal_shift(0.8)
    np.testing.assert_allclose(fixed.z_nm, right.z_nm, atol=1e-9)
    loaded = ZLUT.load(fixed.save(tmp_path / "fixed.npz"))
    assert loaded.focal_shift == 0.8
    with pytest.raises(ValueError, match="focal_shift=0.1"):
        right.with_focal_shift(0.1)
    with pytest.raises(ValueError, match="focal_shift=2.0"):
        build_zlut(images, travel, nm_per_px=100.0, focal_shift=2.0)
    with pytest.raises(ZLUTMismatchError, match="focal_shift differs"):
        ZLUT.stack([right, wrong._replace(bead_ids=np.array([7]), z_nm=right.z_nm)])


def test_a_version_1_file_reads_with_a_focal_shift_of_1(lut, tmp_path):
    path = lut.save(tmp_path / "v1.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    meta["version"] = 1
    del meta["focal_shift"]
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    old = ZLUT.load(path)
    assert old.focal_shift == 1.0 and np.array_equal(old.z_nm, lut.z_nm)
