"""The one form of ROI stack the compiled kernels take."""

from __future__ import annotations

import numpy as np


def as_stack(stack) -> np.ndarray:
    """``stack`` as a C-contiguous, writeable (n, h, w) array the kernels accept: uint8,
    uint16 or float64 (any other integer or float type is converted to float64, so that
    the kernels are compiled for three dtypes only). Read-only inputs are copied, so that
    one compiled kernel per dtype serves every call."""
    a = np.asarray(stack)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"stack must be (n, h, w) or (h, w), got shape {a.shape}")
    if a.dtype.kind not in "uif" or a.dtype == np.bool_:
        raise TypeError(f"stack must be an integer or float array, got {a.dtype}")
    if a.dtype not in (np.uint8, np.uint16, np.float64):
        a = a.astype(np.float64)
    return np.require(a, requirements=["C", "W"])
