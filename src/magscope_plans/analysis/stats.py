"""Mean of a correlated time series and its standard error (blocking method).

Units: those of the data (e.g. nm for an extension trace).

The frames of a bead trace are correlated over the relaxation time tau, so the naive
standard error std / sqrt(N) is too small by about sqrt(2 tau fs). The blocking method
(Flyvbjerg & Petersen 1989) averages neighbouring pairs repeatedly; once blocks are longer
than the correlation time, the block means are independent and std_blocks / sqrt(n_blocks)
is the honest error. The estimate used here is the largest over the levels that still have
at least 32 blocks (slightly conservative), never smaller than the naive error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mean_and_sem"]


def mean_and_sem(x, *, min_blocks: int = 32) -> tuple[float, float]:
    """(mean, standard error of the mean) of a 1-D series, NaN ignored (blocking method)."""
    a = np.asarray(x, dtype=float).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    mean = float(a.mean())
    if a.size < 2:
        return mean, float("nan")
    best = float(a.std(ddof=1) / np.sqrt(a.size))
    blocks = a
    while blocks.size >= 2 * min_blocks:
        blocks = 0.5 * (blocks[: blocks.size // 2 * 2 : 2] + blocks[1 : blocks.size // 2 * 2 : 2])
        best = max(best, float(blocks.std(ddof=1) / np.sqrt(blocks.size)))
    return mean, best
