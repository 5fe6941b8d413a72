"""Reading a run's video rows straight from an HDF5 file (fast tests on a real file)."""

from __future__ import annotations

import os

import h5py
import hdf5plugin
import numpy as np
import pytest

from magscope_session._run_video_files import HDF5Rows, _local_path


def test_rows_are_read_from_the_file_compressed_or_not(tmp_path):
    path = tmp_path / "video.h5"
    data = np.random.default_rng(1).integers(0, 255, (12, 1, 3, 8, 8), dtype=np.uint8)
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("/entry/data/data", data=data, chunks=(1, 1, 3, 8, 8),
                         **hdf5plugin.Bitshuffle(cname="lz4"))
        f.create_dataset("/entry/plain", data=data[:, 0, :, 0, 0])
        f.swmr_mode = True
    rows = HDF5Rows(str(path), "/entry/data/data", True, data.shape)
    assert len(rows) == 12
    assert np.array_equal(rows[3:7], data[3:7])
    assert np.array_equal(np.asarray(rows[5:5]), data[5:5])
    plain = HDF5Rows(str(path), "/entry/plain", False, (12, 3))
    assert np.array_equal(plain[10:12], data[10:12, 0, :, 0, 0])


def test_only_a_readable_local_file_uri_is_read_directly(tmp_path):
    path = tmp_path / "a b.h5"
    path.write_bytes(b"")
    assert _local_path(f"file://localhost{path}".replace(" ", "%20")) == str(path)
    assert _local_path(f"file://{path}") == str(path)
    assert _local_path(f"file://localhost{tmp_path}/missing.h5") is None
    assert _local_path(f"file://otherhost{path}") is None
    assert _local_path("http://127.0.0.1:8000/a.h5") is None
    if os.geteuid() != 0:  # root reads any file
        path.chmod(0)
        assert _local_path(f"file://{path}") is None


@pytest.mark.parametrize("bad", ["/etc/passwd", "s3://bucket/key.h5"])
def test_other_uris_are_not_local_files(bad):
    assert _local_path(bad) is None


def test_the_axis_tiled_adds_for_one_image_per_event_is_added_too(tmp_path):
    path = tmp_path / "video.h5"
    data = np.arange(5 * 3 * 4, dtype=np.int32).reshape(5, 3, 4)
    with h5py.File(path, "w") as f:
        f.create_dataset("/d", data=data)
    rows = HDF5Rows(str(path), "/d", False, (5, 1, 3, 4), event_axis=True)
    served = data[:, None]  # what Tiled serves
    assert np.array_equal(rows[1:4], served[1:4])
    assert np.array_equal(rows[2], served[2])
    assert np.array_equal(rows[(2, 0, 1)], served[2, 0, 1])
    assert np.array_equal(rows[(4, 0)], served[4, 0])
    with pytest.raises(IndexError):
        rows[(1, 1)]
