"""Shared numba settings of the tracking kernels.

Every kernel is compiled with ``cache=True`` (compiled code is stored next to the module
and reused by later processes) and ``nogil=True``. Floating-point flags allow reassociation
and contraction (vectorised reductions, fused multiply-add) but *not* ``nnan``/``ninf``, so
NaN and infinity keep their IEEE meaning inside the kernels.

Cache freshness: numba keys a cached kernel on the source of *its own* file only, so a
parallel kernel in _kernels.py would keep running the old code of a function it calls in
xy.py after xy.py changed. Here the kernels of this package are keyed on one fingerprint
of all the kernel modules (:data:`FINGERPRINT`), computed when this module is imported:
any change to any of them invalidates all their cached code, and a process still running
older code can never hand its compiled kernels to a newer one.
"""

from __future__ import annotations

import hashlib
import os

import numba

__all__ = [
    "CACHE_KEYED_ON_FINGERPRINT",
    "FASTMATH",
    "FINGERPRINT",
    "SCALAR_FASTMATH",
    "jit",
    "n_chunks",
    "parallel_jit",
    "scalar_jit",
]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_KERNEL_MODULES = ("_numba.py", "background.py", "radial_profile.py", "xy.py", "z_match.py",
                   "_kernels.py")


def _fingerprint() -> bytes:
    digest = hashlib.sha256()
    for name in _KERNEL_MODULES:
        digest.update(name.encode())
        with open(os.path.join(_PKG_DIR, name), "rb") as f:
            digest.update(f.read())
    return digest.digest()


FINGERPRINT = _fingerprint()
"""SHA-256 of the sources of all kernel modules, as this process imported them."""


def _install_cache_locators() -> bool:
    """Put locators keyed on :data:`FINGERPRINT` in front of numba's own, for the files
    of this package only. Returns False if numba's internals are not as expected (then
    numba's default per-file keys apply)."""
    try:
        from numba.core import caching

        impl = caching.CacheImpl
        bases = [
            caching.UserProvidedCacheLocator,
            caching.InTreeCacheLocator,
            caching.UserWideCacheLocator,
        ]
    except (ImportError, AttributeError):  # pragma: no cover - other numba versions
        return False
    if any(getattr(c, "_magscope_tracking", False) for c in impl._locator_classes):
        return True
    ours = []
    for base in bases:

        class _FingerprintLocator(base):  # type: ignore[valid-type, misc]
            _magscope_tracking = True

            @classmethod
            def from_function(cls, py_func, py_file):
                if os.path.dirname(os.path.abspath(py_file)) != _PKG_DIR:
                    return None
                return super().from_function(py_func, py_file)

            def get_source_stamp(self):
                return FINGERPRINT

        _FingerprintLocator.__name__ = f"Fingerprint{base.__name__}"
        ours.append(_FingerprintLocator)
    impl._locator_classes = ours + list(impl._locator_classes)
    return True


CACHE_KEYED_ON_FINGERPRINT = _install_cache_locators()

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
SCALAR_FASTMATH = frozenset({"nsz", "arcp", "contract", "afn"})


def jit(func):
    """``numba.njit(cache=True, nogil=True)`` with the safe fast-math flags."""
    return numba.njit(cache=True, nogil=True, fastmath=set(FASTMATH))(func)


def scalar_jit(func):
    """As :func:`jit` but without ``reassoc``: loops with indexed loads stay scalar.

    With reassociation LLVM vectorises table look-ups ``t[k[i]]`` into gather
    instructions, which are several times slower than scalar loads on the Xeons we run
    on; without it, float reductions are not vectorised and the loads stay scalar.
    """
    return numba.njit(cache=True, nogil=True, fastmath=set(SCALAR_FASTMATH))(func)


def parallel_jit(func):
    """As :func:`jit`, with ``parallel=True`` (loops over ROIs use ``numba.prange``)."""
    return numba.njit(cache=True, nogil=True, parallel=True, fastmath=set(FASTMATH))(func)


def n_chunks(n: int) -> int:
    """How many chunks a parallel kernel splits n ROIs into (each chunk allocates its
    scratch buffers once): 8 per numba thread, at most n."""
    return max(1, min(int(n), 8 * numba.get_num_threads()))
