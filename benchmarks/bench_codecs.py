"""HDF5 compression codecs (h5py + hdf5plugin) on simulated camera frames and ROI crops.

Run:  .venv/bin/python benchmarks/bench_codecs.py [--frames N] [--repeats R]

Which codec should the camera's capture file (full frames) and the per-bead ROI crops use?
The simulator (:class:`~magscope_devices.sim.SimWorld` + :class:`~magscope_devices.sim.
Renderer`, in this process, no camera process) renders ``--frames`` distinct 16-bit frames
(100 beads, 96 tethered + 4 reference, on a 1280 x 1024 sensor, seed 3, magnet at 2 mm,
focus 0, 5 ms exposure, 10 ms apart) and cuts 100 crops of 64 x 64 px around the beads'
true positions from each, (100, 64, 64) per frame.

For each codec (``none``, gzip 1/4 with and without shuffle, lzf + shuffle, and the
hdf5plugin filters LZ4, Bitshuffle, Blosc, Blosc2 and Zstd that are available) and each of
the two stacks, it writes the frames one by one into a new file in a temporary folder, as
the camera process's capture file does (``libver="latest"``, SWMR, a resizable dataset with
one chunk per frame, ``resize`` + ``dset[i] = frame`` + ``dset.flush()``), closes it, and
reads it back frame by frame (bit-exactness is checked). Per codec it prints the
compression ratio (raw bytes / file size), the write and read rates in raw MB/s (wall
clock, median of ``--repeats``), the CPU seconds per raw GB written (``time.process_time``,
median) and the raw MB/s one core could write at that CPU cost. The targets are full frames
1280 x 1024 uint16 at 100 frames/s (262 MB/s raw) and crops 100 x 64 x 64 uint16 at 200
frames/s (164 MB/s raw); ``core`` is the fraction of one core a codec needs at the target,
and ``1 core`` says whether that is at most 1.

Everything runs in one thread (``BLOSC_NTHREADS=1``, numba single-threaded). Writes go to
the page cache (no fsync), so the rates are the codec's and HDF5's, not the disk's, and the
read-back is from the cache. The machine is shared: note ``uptime`` with the figures (it
is printed). ``--electrons-per-adu`` changes the camera's conversion gain (the simulator's
default at 16 bit is 0.25 e/ADU: the shot noise fills about 8 of the 16 bits, which bounds
any lossless codec's ratio; the per-pixel entropy of the frames is printed).
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "BLOSC_NTHREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402
import numpy as np  # noqa: E402

from magscope_devices.sim import Renderer, SimParams, SimWorld  # noqa: E402

N_BEADS = 100
WIDTH, HEIGHT = 1280, 1024
ROI = 64
FRAME_FPS = 100.0
CROP_FPS = 200.0
MB = 1e6
GB = 1e9


# -- images ------------------------------------------------------------------------------
def render_stacks(
    n_frames: int, electrons_per_adu: float | None = None
) -> tuple[np.ndarray, np.ndarray, SimParams]:
    """``n_frames`` rendered frames (n, H, W) and their bead crops (n, 100, 64, 64), uint16."""
    params = SimParams(
        n_tethered=N_BEADS - 4, n_reference=4, width_px=WIDTH, height_px=HEIGHT, seed=3,
        bit_depth=16, electrons_per_adu=electrons_per_adu,
    )
    world = SimWorld(params)
    renderer = Renderer(params)
    frames = np.empty((n_frames, *renderer.shape), renderer.dtype)
    crops = np.empty((n_frames, params.n_beads, ROI, ROI), renderer.dtype)
    half = ROI // 2
    for i in range(n_frames):
        truth = world.advance(1000.0 + 0.01 * i, params.exposure_s, 2.0, 0.0, 0.0)
        renderer.render(truth, frames[i])
        cx = np.rint(truth.x_nm / params.nm_per_px).astype(int)
        cy = np.rint(truth.y_nm / params.nm_per_px).astype(int)
        x0 = np.clip(cx - half, 0, WIDTH - ROI)
        y0 = np.clip(cy - half, 0, HEIGHT - ROI)
        for b in range(params.n_beads):
            crops[i, b] = frames[i, y0[b]:y0[b] + ROI, x0[b]:x0[b] + ROI]
    return frames, crops, params


def entropy_bits(a: np.ndarray) -> float:
    """Order-0 Shannon entropy of the pixel values, bits per pixel."""
    counts = np.bincount(a.ravel())
    p = counts[counts > 0] / a.size
    return float(-(p * np.log2(p)).sum())


# -- codecs ------------------------------------------------------------------------------
def codecs() -> list[tuple[str, dict]]:
    """(label, create_dataset keyword arguments) of every codec to measure that is available."""
    out: list[tuple[str, dict]] = [
        ("none", {}),
        ("gzip-1", {"compression": "gzip", "compression_opts": 1}),
        ("gzip-1+shuffle", {"compression": "gzip", "compression_opts": 1, "shuffle": True}),
        ("gzip-4", {"compression": "gzip", "compression_opts": 4}),
        ("gzip-4+shuffle", {"compression": "gzip", "compression_opts": 4, "shuffle": True}),
        ("lzf+shuffle", {"compression": "lzf", "shuffle": True}),
    ]
    plugin = [
        ("LZ4()", lambda: hdf5plugin.LZ4()),
        ("Bitshuffle(lz4)", lambda: hdf5plugin.Bitshuffle(cname="lz4")),
        ("Bitshuffle(zstd)", lambda: hdf5plugin.Bitshuffle(cname="zstd")),
        ("Blosc(lz4,5,bitshuffle)",
         lambda: hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
        ("Blosc(lz4,5,shuffle)",
         lambda: hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
        ("Blosc(zstd,1,bitshuffle)",
         lambda: hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
        ("Blosc2(lz4,5,bitshuffle)",
         lambda: hdf5plugin.Blosc2(cname="lz4", clevel=5, filters=hdf5plugin.Blosc2.BITSHUFFLE)),
        ("Blosc2(lz4,5,shuffle)",
         lambda: hdf5plugin.Blosc2(cname="lz4", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE)),
        ("Blosc2(blosclz,5,shuffle)",
         lambda: hdf5plugin.Blosc2(cname="blosclz", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE)),
        ("Blosc2(zstd,1,bitshuffle)",
         lambda: hdf5plugin.Blosc2(cname="zstd", clevel=1, filters=hdf5plugin.Blosc2.BITSHUFFLE)),
        ("Zstd()", lambda: hdf5plugin.Zstd()),
    ]
    for label, make in plugin:
        try:
            kwargs = dict(make())
        except Exception as exc:  # compressor not built into this hdf5plugin
            print(f"  (skipping {label}: {exc})")
            continue
        if not h5py.h5z.filter_avail(kwargs["compression"]):
            print(f"  (skipping {label}: HDF5 filter {kwargs['compression']} not registered)")
            continue
        out.append((label, kwargs))
    return out


# -- measurement -------------------------------------------------------------------------
@dataclass
class Result:
    codec: str
    ratio: float
    write_mb_s: float
    read_mb_s: float
    cpu_s_per_gb: float
    exact: bool


def write_file(path: Path, data: np.ndarray, kwargs: dict) -> tuple[float, float]:
    """Append ``data`` frame by frame as the capture file does: (wall s, CPU s)."""
    shape = data.shape[1:]
    t0, c0 = time.perf_counter(), time.process_time()
    with h5py.File(path, "w", libver="latest") as f:
        dset = f.create_dataset(
            "data", shape=(0, *shape), maxshape=(None, *shape), dtype=data.dtype,
            chunks=(1, *shape), **kwargs,
        )
        f.swmr_mode = True
        for i in range(data.shape[0]):
            dset.resize(i + 1, axis=0)
            dset[i] = data[i]
            dset.flush()
        f.flush()
    return time.perf_counter() - t0, time.process_time() - c0


def read_file(path: Path, out: np.ndarray) -> float:
    """Read the file back frame by frame into ``out``: wall s."""
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        dset = f["data"]
        for i in range(out.shape[0]):
            dset.read_direct(out, np.s_[i], np.s_[i])
    return time.perf_counter() - t0


def measure(codec: str, kwargs: dict, data: np.ndarray, folder: Path, repeats: int) -> Result:
    raw = data.nbytes
    back = np.empty_like(data)
    writes, cpus, reads = [], [], []
    size = 0
    exact = True
    for r in range(repeats):
        path = folder / f"{codec.replace('/', '_')}-{r}.h5"
        wall, cpu = write_file(path, data, kwargs)
        writes.append(wall)
        cpus.append(cpu)
        size = path.stat().st_size
        back.fill(0)
        reads.append(read_file(path, back))
        exact &= bool(np.array_equal(back, data))
        path.unlink()
    return Result(
        codec=codec,
        ratio=raw / size,
        write_mb_s=raw / MB / statistics.median(writes),
        read_mb_s=raw / MB / statistics.median(reads),
        cpu_s_per_gb=statistics.median(cpus) / (raw / GB),
        exact=exact,
    )


def print_table(title: str, results: list[Result], target_mb_s: float) -> None:
    print(f"\n{title}: target {target_mb_s:.0f} MB/s raw")
    head = (f"{'codec':<26} {'ratio':>6} {'write MB/s':>10} {'read MB/s':>9} "
            f"{'CPU s/GB':>8} {'1-core MB/s':>11} {'core':>5} {'1 core':>6} {'exact':>5}")
    print(head)
    print("-" * len(head))
    for r in sorted(results, key=lambda r: r.write_mb_s, reverse=True):
        one_core = 1e3 / r.cpu_s_per_gb
        frac = target_mb_s / one_core
        print(
            f"{r.codec:<26} {r.ratio:>6.2f} {r.write_mb_s:>10.0f} {r.read_mb_s:>9.0f} "
            f"{r.cpu_s_per_gb:>8.2f} {one_core:>11.0f} {frac:>5.2f} "
            f"{'yes' if frac <= 1.0 else 'no':>6} {'yes' if r.exact else 'NO':>5}"
        )


def _uptime() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on {os.cpu_count()} CPUs"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50, help="distinct frames rendered")
    ap.add_argument("--repeats", type=int, default=3, help="write/read repeats per codec")
    ap.add_argument("--electrons-per-adu", type=float, default=None,
                    help="camera conversion gain (default: the simulator's, 0.25 at 16 bit)")
    args = ap.parse_args(argv)

    print(f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), "
          f"hdf5plugin {hdf5plugin.version}; {_uptime()}")
    t0 = time.perf_counter()
    frames, crops, params = render_stacks(args.frames, args.electrons_per_adu)
    print(
        f"rendered {args.frames} frames {WIDTH} x {HEIGHT} uint16 and crops "
        f"({params.n_beads}, {ROI}, {ROI}) in {time.perf_counter() - t0:.1f} s; "
        f"{params.gain_e_per_adu:g} e/ADU, frame mean {frames.mean():.0f} ADU, "
        f"entropy {entropy_bits(frames[0]):.1f} bits/px (frames), "
        f"{entropy_bits(crops[0]):.1f} bits/px (crops)"
    )
    targets = {
        "frames": (frames, WIDTH * HEIGHT * 2 * FRAME_FPS / MB),
        "crops": (crops, params.n_beads * ROI * ROI * 2 * CROP_FPS / MB),
    }
    print(f"targets: frames {WIDTH} x {HEIGHT} uint16 at {FRAME_FPS:.0f} frames/s = "
          f"{targets['frames'][1]:.0f} MB/s raw; crops {params.n_beads} x {ROI} x {ROI} uint16 "
          f"at {CROP_FPS:.0f} frames/s = {targets['crops'][1]:.0f} MB/s raw")
    codec_list = codecs()
    results: dict[str, list[Result]] = {name: [] for name in targets}
    with tempfile.TemporaryDirectory(prefix="bench-codecs-") as tmp:
        for codec, kwargs in codec_list:
            for name, (data, _) in targets.items():
                results[name].append(measure(codec, kwargs, data, Path(tmp), args.repeats))
    for name, (data, target) in targets.items():
        print_table(f"{name} {data.shape[1:]} uint16 x {data.shape[0]}, one chunk per frame",
                    results[name], target)
    print(f"\n{_uptime()}; total {time.perf_counter() - t0:.0f} s")
    print("ratio = raw bytes / file size; write, read: raw MB/s wall clock (median); CPU s/GB "
          "and 1-core MB/s: write CPU time (median); core: fraction of one core at the target")


if __name__ == "__main__":
    main()
