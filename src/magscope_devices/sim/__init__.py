"""The simulated magnetic-tweezers microscope: world model (physics) and image renderer.

Pure NumPy + numba; importing does no work (numba kernels compile, or load from the
cache, on first use or :meth:`Renderer.warmup`).
"""

from .render import ReferenceRenderer, Renderer
from .world import FrameTruth, SimParams, SimWorld

__all__ = ["FrameTruth", "ReferenceRenderer", "Renderer", "SimParams", "SimWorld"]
