"""Simulated bead ROIs with ground truth, for the tracking-kernel tests.

Beads are rendered by the simulator (``magscope_devices.sim``) on a grid, one bead per
``roi`` x ``roi`` cell of a larger sensor, then cropped: every ROI holds one bead at a
chosen sub-pixel position and defocus, with the camera's shot and read noise.
"""

from __future__ import annotations

import numpy as np

from magscope_devices.sim import FrameTruth, Renderer, SimParams


def frame_truth(params: SimParams, x_px, y_px, dz_nm, radius_nm=1400.0) -> FrameTruth:
    """A hand-made frame: beads at (x, y) px (sensor) with defocus dz (focus at 0 nm)."""
    x = np.atleast_1d(np.asarray(x_px, float)) * params.nm_per_px
    y = np.atleast_1d(np.asarray(y_px, float)) * params.nm_per_px
    z = np.broadcast_to(np.asarray(dz_nm, float), x.shape).copy()
    return FrameTruth.still_beads(x, y, z, radius_nm=radius_nm, exposure_s=params.exposure_s)


def render_rois(
    dz_nm,
    offsets=None,
    *,
    roi: int = 64,
    seed: int = 0,
    nm_per_px: float = 100.0,
    bit_depth: int = 8,
    radius_nm=1400.0,
    noise: bool = True,
    expected: bool = False,
    grid: int = 8,
    pad: int = 0,
):
    """ROIs (n, roi, roi) of one bead each, and the true (x, y) px in ROI coordinates.

    ``dz_nm`` (n,): defocus of each bead. ``offsets`` (n, 2): bead position relative to
    the ROI centre (roi - 1) / 2 (px); default uniform in [-0.5, 0.5). ``expected``: the
    noise-free image in photoelectrons scaled to ADU (float32) instead of camera ADU.
    ``pad``: empty margin (px) between the ROIs of the rendering grid, so that beads
    placed far outside their ROI do not spill into the next one.
    """
    dz = np.atleast_1d(np.asarray(dz_nm, float))
    n = dz.size
    rng = np.random.default_rng(seed)
    if offsets is None:
        offsets = rng.uniform(-0.5, 0.5, (n, 2))
    off = np.broadcast_to(np.asarray(offsets, float), (n, 2))
    rad = np.broadcast_to(np.asarray(radius_nm, float), (n,))
    cell = roi + 2 * pad
    params = SimParams(
        width_px=cell * grid, height_px=cell * grid, n_tethered=0, n_reference=1,
        nm_per_px=nm_per_px, bit_depth=bit_depth, seed=seed,
    )
    renderer = Renderer(params, seed=seed + 1)
    dtype = np.float32 if expected else params.dtype
    out = np.empty((n, roi, roi), dtype)
    centre = (roi - 1) / 2.0
    per = grid * grid
    scale = 1.0 / params.gain_e_per_adu
    for s in range(0, n, per):
        m = min(per, n - s)
        cells = np.arange(m)
        ox = (cells % grid) * cell + pad
        oy = (cells // grid) * cell + pad
        truth = frame_truth(
            params, ox + centre + off[s : s + m, 0], oy + centre + off[s : s + m, 1],
            dz[s : s + m], rad[s : s + m],
        )
        if expected:
            frame = renderer.expected_electrons(truth) * np.float32(scale)
        else:
            frame = renderer.render(truth, noise=noise)
        for k in range(m):
            out[s + k] = frame[oy[k] : oy[k] + roi, ox[k] : ox[k] + roi]
    xy = np.column_stack([centre + off[:, 0], centre + off[:, 1]])
    return out, xy


def sweep(z_lo_nm: float, z_hi_nm: float, step_nm: float, repeats: int, **kw):
    """A focus sweep of one bead: (images (m, roi, roi), z_nm (m,)), ``repeats`` noisy
    images per height, the bead fixed at one sub-pixel position."""
    z = np.arange(z_lo_nm, z_hi_nm + step_nm / 2, step_nm)
    zz = np.repeat(z, repeats)
    kw.setdefault("offsets", np.array([0.21, -0.33]))
    images, _ = render_rois(zz, **kw)
    return images, zz


def truth_now(mic):
    """The simulator's truth (x_nm, y_nm, z_nm per bead) of the newest camera frame of a
    running simulated microscope."""
    _, _, index = mic.camera.latest_frame()
    return mic.truth.frame(index)


def true_rois(truth, ids=None, *, roi: int = 64, nm_per_px: float = 100.0):
    """An ROI table (``roi`` px boxes) centred on the true positions in ``truth`` of beads
    ``ids`` (default: every bead)."""
    from magscope_devices import rois_from_centres

    ids = np.arange(len(truth)) if ids is None else np.asarray(ids)
    return rois_from_centres(
        ids, truth["x_nm"][ids] / nm_per_px, truth["y_nm"][ids] / nm_per_px, roi
    )


def sim_beads_of(rois, truth, *, roi: int = 64, nm_per_px: float = 100.0) -> dict[int, int]:
    """Found bead id -> the simulator's bead whose true position in ``truth`` lies
    nearest its ROI's centre."""
    half = (roi - 1) / 2
    mapping = {}
    for b, x0, y0 in zip(rois.bead_id, rois.x0_px, rois.y0_px, strict=True):
        d2 = (truth["x_nm"] / nm_per_px - (x0 + half)) ** 2 + (
            truth["y_nm"] / nm_per_px - (y0 + half)
        ) ** 2
        mapping[int(b)] = int(np.argmin(d2))
    return mapping
