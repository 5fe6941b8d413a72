"""The video file and the crop, as pure functions on arrays (fast: no process)."""

from __future__ import annotations

import stat

import h5py
import hdf5plugin  # noqa: F401 - the codecs for h5py
import numpy as np
import pytest

from magscope_devices._video_file import (
    BEAD_ID_DATASET,
    CODECS,
    CROP_ORIGIN_DATASET,
    FRAME_INDEX_DATASET,
    IMAGES_DATASET,
    TIMESTAMPS_DATASET,
    VideoFile,
    crop_rois,
)


def test_crops_are_the_frame_pixels_and_rois_off_the_frame_are_zeros():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 4096, (200, 300), dtype=np.uint16)
    x0 = np.array([0, 236, 100, -1, 250, 10])
    y0 = np.array([0, 136, 50, 10, 10, 137])
    crops, origin = crop_rois(frame, x0, y0, 64)
    assert crops.shape == (6, 64, 64) and crops.dtype == np.uint16
    for i in (0, 1, 2):  # inside (the last two touch the right and bottom edges)
        assert np.array_equal(crops[i], frame[y0[i]: y0[i] + 64, x0[i]: x0[i] + 64])
        assert tuple(origin[i]) == (x0[i], y0[i])
    for i in (3, 4, 5):  # left of, right of, below the frame
        assert not crops[i].any() and tuple(origin[i]) == (-1, -1)
    with pytest.raises(ValueError, match="out has shape"):
        crop_rois(frame, x0, y0, 64, out=np.empty((5, 64, 64), np.uint16))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_gives_back_the_exact_pixels(tmp_path, codec):
    rng = np.random.default_rng(2)
    rows = rng.poisson(100, (7, 3, 16, 16)).astype(np.uint16)
    path = tmp_path / f"{codec}.h5"
    video = VideoFile(path, (3, 16, 16), np.uint16, codec=codec, bead_ids=[4, 9, 12])
    for i, row in enumerate(rows):
        video.append(row, 100 + 2 * i, 1e9 + i / 100, np.full((3, 2), i, np.int32))
    video.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the owner's only
    with h5py.File(path, "r", swmr=True) as f:
        assert np.array_equal(f[IMAGES_DATASET][:], rows)
        assert f[IMAGES_DATASET].chunks == (1, 3, 16, 16)
        assert list(f[FRAME_INDEX_DATASET][:]) == list(range(100, 114, 2))
        assert f[TIMESTAMPS_DATASET][3] == pytest.approx(1e9 + 0.03)
        assert list(f[BEAD_ID_DATASET][:]) == [4, 9, 12]
        assert f[CROP_ORIGIN_DATASET][5].tolist() == [[5, 5]] * 3
        assert f["entry"].attrs["codec"] == codec


def test_rows_are_flushed_cut_to_the_announced_ones_and_checked(tmp_path):
    path = tmp_path / "frames.h5"
    video = VideoFile(path, (8, 10), np.uint8, flush_every=4)
    frame = np.arange(80, dtype=np.uint8).reshape(8, 10)
    for i in range(6):
        video.append(frame + i, i, float(i))
    assert video.rows == 6 and video.flushed_rows == 4 and video.unflushed == 2
    with h5py.File(path, "r", swmr=True) as f:  # a reader sees the flushed rows
        assert len(f[FRAME_INDEX_DATASET]) >= 4
    with pytest.raises(ValueError, match=r"a row of shape \(8, 11\) does not fit the file's \(8, 10\)"):
        video.append(np.zeros((8, 11), np.uint8), 6, 6.0)
    video.close(announced=5)
    with h5py.File(path, "r") as f:
        assert f[IMAGES_DATASET].shape == (5, 8, 10)
        assert np.array_equal(f[IMAGES_DATASET][4], frame + 4)
    assert video.raw_bytes == 6 * 80


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="codec 'lz77' is not one of"):
        VideoFile(tmp_path / "a.h5", (4, 4), np.uint8, codec="lz77")
    with pytest.raises(ValueError, match="crops of 3 beads need 3 bead ids"):
        VideoFile(tmp_path / "b.h5", (3, 4, 4), np.uint8, bead_ids=[1, 2])
